"""The Hub steps around narrator's Hub interface, with a fake of that interface
(tests/support/fake_hub.py): where a --repo-id dataset is downloaded and when it is not
downloaded again, what an upload holds (never state or staging), the dataset card, the tag
LeRobot resolves, and the refusal to push a dataset that fails validation. The real
huggingface_hub calls are not exercised (no Hub is reachable here); their error translation is
tested with a stand-in HfApi object."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from narrator.common.config import AnnotationSettings, NarratorConfig, load_config
from narrator.common.errors import (
    ConfigError,
    HubAccessError,
    HubUnavailableError,
    PushRefusedError,
)
from narrator.common.prompts import load_prompts
from narrator.common.runs import RunRecord, compute_module_hashes, default_state_dir
from narrator.hub.card import BEGIN, split_front_matter
from narrator.hub.client import HuggingFaceHub
from narrator.hub.flow import DOWNLOAD_RECORD, lerobot_home, prepare_root, push_after_run
from narrator.samples.dataset import make_sample_dataset
from tests.support.annotated_fixture import make_annotated_dataset
from tests.support.fake_hub import FakeHub

REPO = "someone/pick-place"


def config(**hub: Any) -> NarratorConfig:
    return load_config({"hub": hub}, env={})


def quiet(_line: str) -> None:
    return None


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample_dataset(tmp_path_factory.mktemp("remote") / "ds", episodes=2, cameras=1)


def test_lerobot_home_follows_lerobots_variables(tmp_path: Path) -> None:
    assert lerobot_home({"HF_LEROBOT_HOME": str(tmp_path)}) == tmp_path
    assert lerobot_home({"HF_HOME": str(tmp_path)}) == tmp_path / "lerobot"
    assert lerobot_home({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "huggingface" / "lerobot"


def test_download_once_into_lerobot_home_and_reuse_it(
    remote: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "home"))
    hub = FakeHub(sources={REPO: {"main": remote}})
    lines: list[str] = []
    root = prepare_root(config(repo_id=REPO), None, hub, say=lines.append)
    assert root == tmp_path / "home" / "someone" / "pick-place"
    assert (root / "meta" / "info.json").read_bytes() == (remote / "meta/info.json").read_bytes()
    assert hub.downloads == [(REPO, FakeHub.sha_of(REPO, "main"), root)]
    record = json.loads((default_state_dir(root) / DOWNLOAD_RECORD).read_text())
    assert record == {"commit": FakeHub.sha_of(REPO, "main"), "complete": True,
                      "repo_id": REPO, "revision": None}  # fmt: skip
    # Again (a resumed or finished run): the annotated copy is used, never downloaded over.
    assert prepare_root(config(repo_id=REPO), None, hub, say=lines.append) == root
    assert len(hub.downloads) == 1
    assert any("downloaded from someone/pick-place at commit" in line for line in lines)


def test_an_interrupted_download_is_finished_at_the_same_commit(
    remote: Path, tmp_path: Path
) -> None:
    hub = FakeHub(sources={REPO: {"main": remote, "v3.0": remote}}, fail_next_download=True)
    target = tmp_path / "ds"
    with pytest.raises(HubUnavailableError):
        prepare_root(config(repo_id=REPO, revision="v3.0"), target, hub, say=quiet)
    assert (target / "meta" / "info.json").exists() and not (target / "data").exists()
    root = prepare_root(config(repo_id=REPO, revision="v3.0"), target, hub, say=quiet)
    assert [d[1] for d in hub.downloads] == [FakeHub.sha_of(REPO, "v3.0")] * 2
    assert (root / "data").is_dir()


def test_directories_that_hold_something_else_are_refused(remote: Path, tmp_path: Path) -> None:
    hub = FakeHub(sources={REPO: {"main": remote, "dev": remote}, "other/ds": {"main": remote}})
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty and holds no LeRobot dataset"):
        prepare_root(config(repo_id=REPO), busy, hub, say=quiet)
    target = tmp_path / "ds"
    prepare_root(config(repo_id=REPO), target, hub, say=quiet)
    with pytest.raises(ConfigError, match="not --revision dev"):
        prepare_root(config(repo_id=REPO, revision="dev"), target, hub, say=quiet)
    with pytest.raises(ConfigError, match="holds a download of someone/pick-place"):
        prepare_root(config(repo_id="other/ds"), target, hub, say=quiet)
    with pytest.raises(HubAccessError, match="no such revision"):
        prepare_root(config(repo_id=REPO, revision="nope"), tmp_path / "new", hub, say=quiet)
    assert len(hub.downloads) == 1


def test_a_local_dataset_given_with_a_repo_id_is_not_downloaded(remote: Path) -> None:
    hub = FakeHub()
    assert prepare_root(config(repo_id=REPO), remote, hub, say=quiet) == remote
    assert prepare_root(config(), remote, None, say=quiet) == remote
    assert hub.downloads == []


def _record(root: Path, **changes: Any) -> RunRecord:
    settings = AnnotationSettings(reasoning_effort="low")
    prompts = load_prompts()
    hashes = compute_module_hashes(settings, prompts, "sim/model")
    values: dict[str, Any] = {
        "run_id": "3f9c2a1b7d4e", "root": root, "fingerprint": "f" * 16, "model": "sim/model",
        "settings": settings, "prompts": prompts, "module_hashes": hashes,
        "generation": "g" * 16, "staging_dir": root / ".narrator" / "staging",
        "total_files": 2, "total_episodes": 4, "total_jobs": 12, "created_at": 0.0,
    }  # fmt: skip
    values.update(changes)
    return RunRecord(**values)


def test_push_uploads_the_dataset_and_card_and_moves_the_version_tag(tmp_path: Path) -> None:
    root = make_annotated_dataset(tmp_path / "ds", episodes=4, cameras=1, episodes_per_file=2)
    (root / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Pick and place\n")
    leftovers = [
        ".narrator/redis/appendonly.aof",
        ".narrator/staging/r/g/data/chunk-000/file-000.parquet",
        ".cache/huggingface/download/meta/info.json.metadata",
        "run-state/logs/worker.log",
        "run-state/staging/r/g/data/chunk-000/file-000.parquet",
    ]
    for rel in leftovers:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("narrator's own")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    hub = FakeHub()
    cfg = load_config(
        {"hub": {"push_to_hub": True, "push_repo_id": "me/annotated", "private": True},
         "state_dir": str(root / "run-state")},
        env={},
    )  # fmt: skip
    pushed = push_after_run(cfg, root, _record(root), hub, say=quiet)

    (commit,) = hub.commits
    expected = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] not in (".narrator", ".cache", "run-state")
    )
    assert sorted(commit.files) == expected  # README.md: the card, not the local file
    assert hub.created == [("me/annotated", True)]
    assert commit.message == "Add language annotations (plan, interjections, vqa) by narrator " \
        "with sim/model"  # fmt: skip
    card = commit.files["README.md"].decode()
    meta, body = split_front_matter(card)
    assert meta["license"] == "apache-2.0" and "LeRobot" in meta["tags"]
    assert body.startswith("# Pick and place\n") and BEGIN in body
    assert "`sim/model`" in body and "`reasoning_effort` low" in body and "| `subtask` |" in body
    assert hub.tags == {("me/annotated", "v3.0"): pushed.revision}
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before  # read-only


def test_push_is_refused_for_a_dataset_that_fails_validation(tmp_path: Path) -> None:
    plain = make_sample_dataset(tmp_path / "plain", episodes=2, cameras=0)  # never annotated
    hub = FakeHub()
    cfg = config(push_to_hub=True, repo_id=REPO)
    with pytest.raises(PushRefusedError, match=r"fails validation .* nothing was pushed"):
        push_after_run(cfg, plain, _record(plain), hub, say=quiet)
    broken = make_annotated_dataset(tmp_path / "broken", episodes=2, cameras=1)
    info = json.loads((broken / "meta" / "info.json").read_text())
    info["features"].pop("language_events")
    (broken / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(PushRefusedError, match="info_feature"):
        push_after_run(cfg, broken, _record(broken), hub, say=quiet)
    assert hub.commits == [] and hub.created == [] and hub.tags == {}


# --- the real client's error translation, with a stand-in HfApi ------------------------------


def _response(status: int) -> Any:
    try:
        import httpx2 as http
    except ImportError:  # huggingface_hub before 2.0 speaks requests
        import requests

        response = requests.Response()
        response.status_code = status
        return response
    return http.Response(status, request=http.Request("GET", "https://hub.invalid/api"))


class StandInApi:
    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.calls: list[tuple[str, Any]] = []

    def dataset_info(self, repo_id: str, revision: str | None = None) -> Any:
        if self.error is not None:
            raise self.error
        return type("Info", (), {"sha": "c" * 40})()

    def delete_tag(self, repo_id: str, *, tag: str, repo_type: str) -> None:
        from huggingface_hub import errors

        self.calls.append(("delete_tag", tag))
        raise errors.RevisionNotFoundError("no such tag", response=_response(404))

    def create_tag(self, repo_id: str, *, tag: str, revision: str, repo_type: str) -> None:
        self.calls.append(("create_tag", (tag, revision, repo_type)))


def test_the_real_client_translates_hub_errors() -> None:
    from huggingface_hub import errors

    assert HuggingFaceHub(lambda: StandInApi()).resolve(REPO, None) == "c" * 40
    cases: list[tuple[BaseException, type[Exception], str]] = [
        (errors.RepositoryNotFoundError("x", response=_response(404)), HubAccessError, "no such"),
        (errors.HfHubHTTPError("x", response=_response(503)), HubUnavailableError, "503"),
        (errors.HfHubHTTPError("x", response=_response(403)), HubAccessError, r"refused \(403"),
        (ConnectionResetError("reset"), HubUnavailableError, "cannot reach the Hub"),
    ]
    for error, kind, words in cases:
        with pytest.raises(kind, match=words):
            HuggingFaceHub(lambda e=error: StandInApi(e)).resolve(REPO, "main")  # type: ignore[misc]
    api = StandInApi()
    HuggingFaceHub(lambda: api).move_tag(REPO, "v3.0", "d" * 40)
    assert api.calls == [("delete_tag", "v3.0"), ("create_tag", ("v3.0", "d" * 40, "dataset"))]


def test_a_failed_tag_names_the_uploaded_commit_and_how_to_tag_it(tmp_path: Path) -> None:
    root = make_annotated_dataset(tmp_path / "ds", episodes=2, cameras=1)

    class NoTags(FakeHub):
        def move_tag(self, repo_id: str, tag: str, revision: str) -> None:
            raise HubAccessError("tagging: the Hub refused (403)")

    hub = NoTags()
    with pytest.raises(HubAccessError) as caught:
        push_after_run(config(push_to_hub=True, repo_id=REPO), root, _record(root), hub, say=quiet)
    assert len(hub.commits) == 1  # the upload happened; the message says what is missing
    message = str(caught.value)
    assert "but tagging it v3.0 failed" in message and "create_tag(" in message
    assert re.search(r"as commit [0-9a-f]{12}, .*revision='[0-9a-f]{40}'", message)
