"""The narrow interface to the Hugging Face Hub, and its one implementation.

:class:`HubClient` is everything narrator asks of the Hub: resolve and download a dataset
revision, make sure a dataset repo exists, commit files to it, and point a tag at a commit.
:class:`HuggingFaceHub` implements it with ``huggingface_hub`` (imported here only, inside the
methods, so ``narrator --help`` and runs without the Hub never import it). Tests use a fake
implementation of the same protocol; no test reaches the real Hub.

Invariants:
* Every call names ``repo_type="dataset"``.
* Failures come out as :class:`~narrator.common.errors.HubAccessError` (the user must change
  something: repo, revision, token, permission) or
  :class:`~narrator.common.errors.HubUnavailableError` (the Hub did not answer), with a
  one-line message; the token is never printed (huggingface_hub reads ``HF_TOKEN`` or the
  ``hf auth login`` token itself).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from narrator.common.errors import ConfigError, HubAccessError, HubUnavailableError

REPO_TYPE = "dataset"
INSTALL_HINT = "install the Hub extra: pip install 'narrator[hub]'"


@dataclass(frozen=True)
class PushedCommit:
    """A commit made on the Hub: its id and where to see it."""

    repo_id: str
    revision: str  # the commit sha
    url: str


class HubClient(Protocol):
    """What narrator needs of the Hub (see the module docstring)."""

    def resolve(self, repo_id: str, revision: str | None) -> str:
        """The commit sha that ``revision`` (None: the default branch) of the dataset names."""
        ...

    def download(self, repo_id: str, revision: str, local_dir: Path) -> None:
        """Every file of the dataset at commit ``revision`` into ``local_dir``."""
        ...

    def ensure_repo(self, repo_id: str, *, private: bool) -> None:
        """Create the dataset repo unless it exists (an existing repo keeps its visibility)."""
        ...

    def commit(
        self,
        repo_id: str,
        *,
        root: Path,
        paths: Sequence[str],
        extra: Mapping[str, bytes],
        message: str,
    ) -> PushedCommit:
        """One commit that adds ``root/p`` as ``p`` for each of ``paths`` and each ``extra``
        (path in repo -> bytes, e.g. the dataset card)."""
        ...

    def move_tag(self, repo_id: str, tag: str, revision: str) -> None:
        """Point ``tag`` at ``revision`` (deleting the tag first if it points elsewhere)."""
        ...


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """huggingface_hub's exceptions as narrator's, with a message that says what to do."""
    from huggingface_hub import errors as hub_errors

    try:
        yield
    except (hub_errors.RepositoryNotFoundError, hub_errors.GatedRepoError) as exc:
        raise HubAccessError(
            f"{what}: the Hub has no such dataset repo, or your token may not see it "
            f"({type(exc).__name__}); check the name, log in with `hf auth login` or set "
            "HF_TOKEN"
        ) from None
    except hub_errors.RevisionNotFoundError:
        raise HubAccessError(f"{what}: no such revision (branch, tag or commit)") from None
    except hub_errors.LocalTokenNotFoundError:
        raise HubAccessError(
            f"{what}: not logged in to the Hub; run `hf auth login` or set HF_TOKEN"
        ) from None
    except hub_errors.HfHubHTTPError as exc:
        status = _status(exc)
        if status is not None and (status >= 500 or status == 429):
            raise HubUnavailableError(
                f"{what}: the Hub answered {status}; run the same command again later"
            ) from None
        raise HubAccessError(
            f"{what}: the Hub refused ({status}: {str(exc).splitlines()[0][:200]}); check the "
            "repo name and that your token may write it"
        ) from None
    except OSError as exc:
        raise HubUnavailableError(
            f"{what}: cannot reach the Hub ({type(exc).__name__}: {exc}); check the network, "
            "then run the same command again"
        ) from None


def _api() -> Any:
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ConfigError(f"the Hub round trip needs huggingface_hub; {INSTALL_HINT}") from None
    return HfApi()


class HuggingFaceHub:
    """:class:`HubClient` over ``huggingface_hub.HfApi``."""

    def __init__(self, api_factory: Callable[[], Any] = _api) -> None:
        self._api = api_factory()

    def resolve(self, repo_id: str, revision: str | None) -> str:
        with _translated(f"dataset {repo_id}" + (f" at {revision}" if revision else "")):
            info = self._api.dataset_info(repo_id, revision=revision)
        return str(info.sha)

    def download(self, repo_id: str, revision: str, local_dir: Path) -> None:
        from huggingface_hub import snapshot_download

        with _translated(f"downloading {repo_id} at {revision}"):
            snapshot_download(
                repo_id, repo_type=REPO_TYPE, revision=revision, local_dir=str(local_dir)
            )

    def ensure_repo(self, repo_id: str, *, private: bool) -> None:
        with _translated(f"creating dataset repo {repo_id}"):
            self._api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)

    def commit(
        self,
        repo_id: str,
        *,
        root: Path,
        paths: Sequence[str],
        extra: Mapping[str, bytes],
        message: str,
    ) -> PushedCommit:
        from huggingface_hub import CommitOperationAdd

        operations = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=root / p) for p in paths]
        operations += [
            CommitOperationAdd(path_in_repo=p, path_or_fileobj=b) for p, b in extra.items()
        ]
        with _translated(f"uploading to {repo_id}"):
            info = self._api.create_commit(
                repo_id, operations, commit_message=message, repo_type=REPO_TYPE
            )
        return PushedCommit(repo_id, str(info.oid), str(info.commit_url))

    def move_tag(self, repo_id: str, tag: str, revision: str) -> None:
        from huggingface_hub import errors as hub_errors

        with _translated(f"tagging {repo_id} as {tag}"):
            try:
                self._api.delete_tag(repo_id, tag=tag, repo_type=REPO_TYPE)
            except (hub_errors.RevisionNotFoundError, hub_errors.HfHubHTTPError) as exc:
                if isinstance(exc, hub_errors.HfHubHTTPError) and _status(exc) not in (404, None):
                    raise
            self._api.create_tag(repo_id, tag=tag, revision=revision, repo_type=REPO_TYPE)
