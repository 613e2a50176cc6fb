"""A fake of narrator's :class:`~narrator.hub.client.HubClient` interface (not of
huggingface_hub): dataset repos held in memory, downloads copied from a local folder. It
records every call, so tests can say exactly what would have been uploaded and tagged."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from narrator.common.errors import HubAccessError, HubUnavailableError
from narrator.hub.client import PushedCommit


@dataclass
class FakeCommit:
    repo_id: str
    message: str
    files: dict[str, bytes]  # path in repo -> content


@dataclass
class FakeHub:
    """``sources``: repo id -> {revision name -> local folder holding that revision}."""

    sources: dict[str, dict[str, Path]] = field(default_factory=dict)
    downloads: list[tuple[str, str, Path]] = field(default_factory=list)
    created: list[tuple[str, bool]] = field(default_factory=list)
    commits: list[FakeCommit] = field(default_factory=list)
    tags: dict[tuple[str, str], str] = field(default_factory=dict)
    fail_next_download: bool = False  # simulate a download cut off half way

    @staticmethod
    def sha_of(repo_id: str, revision: str) -> str:
        return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()

    def resolve(self, repo_id: str, revision: str | None) -> str:
        revisions = self.sources.get(repo_id)
        if revisions is None:
            raise HubAccessError(f"dataset {repo_id}: no such dataset repo")
        name = revision or "main"
        if name not in revisions:
            raise HubAccessError(f"dataset {repo_id} at {name}: no such revision")
        return self.sha_of(repo_id, name)

    def _folder(self, repo_id: str, sha: str) -> Path:
        for name, folder in self.sources[repo_id].items():
            if self.sha_of(repo_id, name) == sha:
                return folder
        raise HubAccessError(f"dataset {repo_id}: no commit {sha}")

    def download(self, repo_id: str, revision: str, local_dir: Path) -> None:
        self.downloads.append((repo_id, revision, local_dir))
        folder = self._folder(repo_id, revision)
        # What huggingface_hub leaves in a local_dir download: its own bookkeeping.
        marker = local_dir / ".cache" / "huggingface" / "download" / "meta" / "info.json.metadata"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(revision)
        if self.fail_next_download:
            self.fail_next_download = False
            shutil.copytree(folder / "meta", local_dir / "meta", dirs_exist_ok=True)
            raise HubUnavailableError(f"downloading {repo_id}: connection reset by peer")
        shutil.copytree(folder, local_dir, dirs_exist_ok=True)

    def ensure_repo(self, repo_id: str, *, private: bool) -> None:
        self.created.append((repo_id, private))

    def commit(
        self,
        repo_id: str,
        *,
        root: Path,
        paths: Sequence[str],
        extra: Mapping[str, bytes],
        message: str,
    ) -> PushedCommit:
        files = {p: (root / p).read_bytes() for p in paths}
        files.update(extra)
        self.commits.append(FakeCommit(repo_id, message, files))
        sha = hashlib.sha1(f"{repo_id}:{len(self.commits)}".encode()).hexdigest()
        return PushedCommit(repo_id, sha, f"https://hub.invalid/datasets/{repo_id}/commit/{sha}")

    def move_tag(self, repo_id: str, tag: str, revision: str) -> None:
        self.tags[(repo_id, tag)] = revision
