"""The Hub steps of ``narrator annotate``: where a ``--repo-id`` dataset is downloaded before
the run (:func:`prepare_root`), and the upload after the commit (:func:`push_after_run`).

Download: into ROOT, or ``$HF_LEROBOT_HOME/USER/NAME`` without ROOT (where LeRobot keeps the
datasets it downloads; ``HF_LEROBOT_HOME`` defaults to ``$HF_HOME/lerobot``). The revision is
resolved to a commit first and downloaded at that commit; a record in the state directory
(``hub-download.json``) says which, and whether the download finished. A directory that
already holds a dataset is used as it is: the same command again resumes the run (and never
downloads over shards a run rewrote), an interrupted download is finished first, and a
directory holding another repo or revision is refused.

Upload: refused (:class:`~narrator.common.errors.PushRefusedError`) unless the dataset passes
``narrator validate``; then one commit with the dataset's files (:mod:`narrator.hub.upload`)
and the updated dataset card (:mod:`narrator.hub.card`), after which the tag named by
``meta/info.json``'s ``codebase_version`` (``v3.0``) is moved to that commit: LeRobot loads
the commit that tag names, so without the move it would load the dataset as it was.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from narrator.common.config import NarratorConfig
from narrator.common.errors import ConfigError, HubAccessError, HubError, PushRefusedError
from narrator.common.prompts import SHIPPED_DIR
from narrator.common.runs import RunRecord, default_state_dir
from narrator.hub.card import CardFacts, build_card
from narrator.hub.client import HubClient, HuggingFaceHub, PushedCommit
from narrator.hub.upload import CARD, inside, list_files, upload_paths

DOWNLOAD_RECORD = "hub-download.json"
DEFAULT_CODEBASE_VERSION = "v3.0"

Say = Callable[[str], None]


def hub_client() -> HubClient:
    """The real Hub (tests replace this function to hand in a fake)."""
    return HuggingFaceHub()


def lerobot_home(env: Mapping[str, str] | None = None) -> Path:
    """Where LeRobot keeps downloaded datasets: ``HF_LEROBOT_HOME``, else ``HF_HOME/lerobot``
    (``HF_HOME`` defaulting to ``$XDG_CACHE_HOME/huggingface`` or ``~/.cache/huggingface``)."""
    environ = os.environ if env is None else env
    if environ.get("HF_LEROBOT_HOME"):
        return Path(environ["HF_LEROBOT_HOME"]).expanduser()
    if environ.get("HF_HOME"):
        return Path(environ["HF_HOME"]).expanduser() / "lerobot"
    cache = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "huggingface" / "lerobot"


def _state_dir(config: NarratorConfig, root: Path) -> Path:
    return Path(config.state_dir or default_state_dir(root))


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc}); delete it to download again") from exc
    return data if isinstance(data, dict) else None


def _write_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def prepare_root(
    config: NarratorConfig, root: Path | None, client: HubClient | None, *, say: Say
) -> Path:
    """The dataset root to annotate: ``root`` itself, or where ``--repo-id`` was downloaded
    (see the module docstring)."""
    hub = config.hub
    if hub.repo_id is None:
        if root is None:
            raise ConfigError("give the dataset ROOT, or --repo-id USER/NAME")
        return root
    assert client is not None
    target = (root if root is not None else lerobot_home() / hub.repo_id).absolute()
    record_path = _state_dir(config, target) / DOWNLOAD_RECORD
    record = _read_record(record_path)
    holds_dataset = (target / "meta" / "info.json").is_file()
    if record is not None and record.get("repo_id") != hub.repo_id:
        raise ConfigError(
            f"{target} holds a download of {record.get('repo_id')}, not {hub.repo_id}; give "
            "another ROOT for it"
        )
    if record is not None and hub.revision not in (None, record.get("revision")):
        raise ConfigError(
            f"{target} holds {hub.repo_id} at {record.get('revision') or 'main'} (commit "
            f"{str(record.get('commit'))[:12]}), not --revision {hub.revision}; give another "
            "ROOT for that revision"
        )
    if holds_dataset and (record is None or record.get("complete")):
        how = (
            f"downloaded from {hub.repo_id} at commit {str(record.get('commit'))[:12]}"
            if record
            else f"not downloaded by narrator; annotated as it is, {hub.repo_id} is the push target"
        )
        say(f"using the dataset in {target} ({how})")
        return target
    if record is None and target.exists() and any(target.iterdir()):
        raise ConfigError(
            f"{target} is not empty and holds no LeRobot dataset (no meta/info.json); give an "
            f"empty or new directory to download {hub.repo_id} into"
        )
    commit = str(record["commit"]) if record else client.resolve(hub.repo_id, hub.revision)
    _write_record(
        record_path,
        {"repo_id": hub.repo_id, "revision": hub.revision, "commit": commit, "complete": False},
    )
    say(f"downloading {hub.repo_id} at commit {commit[:12]} into {target}")
    target.mkdir(parents=True, exist_ok=True)
    client.download(hub.repo_id, commit, target)
    if not (target / "meta" / "info.json").is_file():
        raise ConfigError(
            f"{hub.repo_id} at {commit[:12]} has no meta/info.json: it is not a LeRobot v3 dataset"
        )
    _write_record(
        record_path,
        {"repo_id": hub.repo_id, "revision": hub.revision, "commit": commit, "complete": True},
    )
    return target


def _version() -> str:
    try:
        return metadata.version("narrator")
    except metadata.PackageNotFoundError:
        return "unknown"


def _prompt_source(source: str) -> str:
    path = Path(source)
    try:
        path.resolve().relative_to(SHIPPED_DIR.resolve())
    except (ValueError, OSError):
        return f"--prompt-dir file `{path.name}`"
    return "shipped"


def card_facts(
    record: RunRecord,
    *,
    repo_id: str,
    info: Mapping[str, Any],
    rows_by_style: Mapping[str, int],
    episodes_total: int,
) -> CardFacts:
    """What the dataset card says about ``record``'s run (pure)."""
    settings = record.settings
    return CardFacts(
        repo_id=repo_id,
        model=record.model,
        run_id=record.run_id,
        generation=record.generation,
        narrator_version=_version(),
        codebase_version=str(info.get("codebase_version") or DEFAULT_CODEBASE_VERSION),
        modules=tuple(record.module_hashes),
        module_hashes=dict(record.module_hashes),
        prompts={
            name: (digest, _prompt_source(record.prompts.sources.get(name, "")))
            for name, digest in record.prompts.hashes().items()
            if name.split(".", 1)[0] in record.module_hashes
        },
        request_options={
            "temperature": settings.temperature,
            "max_tokens": settings.max_tokens,
            "seed": settings.seed,
            "reasoning_effort": settings.reasoning_effort,
        },
        settings=settings.model_dump(mode="json"),
        episodes_total=episodes_total,
        episodes_annotated=record.total_episodes,
        selection=record.selection,
        rows_by_style=dict(rows_by_style),
        info=dict(info),
    )


def default_commit_message(record: RunRecord) -> str:
    modules = ", ".join(record.module_hashes)
    return f"Add language annotations ({modules}) by narrator with {record.model}"


def push_after_run(
    config: NarratorConfig, root: Path, record: RunRecord, client: HubClient, *, say: Say
) -> PushedCommit:
    """Validate, upload and tag (see the module docstring)."""
    from narrator.inspection.dataset_check import check_annotated_dataset

    hub = config.hub
    target = hub.push_repo_id or hub.repo_id
    if target is None:
        raise ConfigError("--push-to-hub needs USER/NAME (or --repo-id)")
    report = check_annotated_dataset(root)
    if not report.ok:
        first = next(f for f in report.findings if f.severity == "error")
        raise PushRefusedError(
            f"{root} fails validation ({report.errors} error(s), first: episode "
            f"{first.episode} {first.rule}: {first.message}); nothing was pushed. "
            f"`narrator validate {root}` lists them"
        )
    info = json.loads((root / "meta" / "info.json").read_text(encoding="utf-8"))
    styles: Counter[str] = Counter()
    for stats in report.episodes.values():
        styles.update(stats.styles)
    facts = card_facts(
        record,
        repo_id=target,
        info=info,
        rows_by_style=styles,
        episodes_total=len(report.episodes),
    )
    card_path = root / CARD
    existing = card_path.read_text(encoding="utf-8") if card_path.is_file() else None
    card = build_card(existing, facts)
    state_dir = _state_dir(config, root)
    excluded = [
        d
        for d in (inside(root, state_dir), inside(root, config.staging_dir or state_dir))
        if d is not None
    ]
    paths = upload_paths(list_files(root), excluded)
    say(f"pushing {len(paths)} file(s) and the dataset card to {target}")
    client.ensure_repo(target, private=hub.private)
    pushed = client.commit(
        target,
        root=root,
        paths=paths,
        extra={CARD: card.encode("utf-8")},
        message=hub.commit_message or default_commit_message(record),
    )
    try:
        client.move_tag(target, facts.codebase_version, pushed.revision)
    except HubError as exc:
        raise HubAccessError(
            f"uploaded {target} as commit {pushed.revision[:12]}, but tagging it "
            f"{facts.codebase_version} failed ({exc}); LeRobot loads the commit that tag names, "
            f"so move the tag: HfApi().delete_tag('{target}', tag='{facts.codebase_version}', "
            f"repo_type='dataset'), then HfApi().create_tag('{target}', "
            f"tag='{facts.codebase_version}', revision='{pushed.revision}', repo_type='dataset')"
        ) from exc
    say(f"tagged {target} {facts.codebase_version} at {pushed.revision[:12]} (what LeRobot loads)")
    return pushed
