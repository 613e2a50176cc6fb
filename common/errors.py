"""The one error hierarchy of narrator.

The class of an exception says what to do with the failure:

* :class:`TransientError` - retry (with backoff, preferably on another replica); the same
  request may well succeed later.
* :class:`PermanentError` - retrying will not help; record the failure and move on.

Every message should say what is wrong and what the user can do about it.
"""

from __future__ import annotations


class NarratorError(Exception):
    """Base of every error narrator raises on purpose."""


class TransientError(NarratorError):
    """A failure that may go away on retry (server overloaded, timeout, reset)."""


class PermanentError(NarratorError):
    """A failure that a retry will not fix (bad input, rejected request, contract breach)."""


# --- input and configuration -------------------------------------------------------------


class ConfigError(PermanentError):
    """Invalid configuration (flags, environment, YAML)."""


class DatasetError(PermanentError):
    """The dataset on disk is malformed; the message names the file and the problem."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[type[DatasetError], tuple[str, str]]:
        # Raised in a frame-pool process, it crosses back by pickle with both arguments.
        return (type(self), (self.path, self.problem))


class VideoDecodeError(DatasetError):
    """A video could not be decoded at the timestamps an episode needs."""


class SecurityError(PermanentError):
    """A request tried to do something it is not allowed to (other dataset root, pickle...)."""


# --- the VLM -----------------------------------------------------------------------------


class VLMError(NarratorError):
    """Base for failures talking to the vision-language model."""


class VLMUnavailableError(VLMError, TransientError):
    """408/429/5xx, timeouts, connection resets, no healthy replica right now."""


class VLMRequestRejectedError(VLMError, PermanentError):
    """400/413/422: the server refused this one request (too long, a parameter it does not
    take); sending it again will not help, but other requests of the job may well work, so it
    fails the item, not the job."""


class VLMAccessError(VLMError, PermanentError):
    """The server refuses every request of this kind: the API key (401/403), the model or the
    route (404/405). Nothing of the run can succeed until the configuration is fixed, so it
    fails the job (and, found by the start-up check, the command) instead of one item.

    Deliberately not a :class:`VLMRequestRejectedError`: modules catch that one as an item
    failure.
    """


class BadAnswerError(VLMError, PermanentError):
    """The model answered, but even after one corrective retry the answer is unusable."""


# --- contract ----------------------------------------------------------------------------


class ContractError(PermanentError):
    """Rows that break docs/CONTRACT.md §2 (row rules) or §4 (validation)."""


# --- jobs --------------------------------------------------------------------------------


class ModuleFailedError(PermanentError):
    """Every item a module asked for one episode failed: the job fails instead of staging an
    empty result (a wrong model or API key must not produce an empty dataset)."""


# --- the Hugging Face Hub ----------------------------------------------------------------


class HubError(NarratorError):
    """Base for failures of the Hub round trip (``--repo-id``, ``--push-to-hub``)."""


class HubAccessError(HubError, PermanentError):
    """The Hub refuses: no such repo or revision, no permission, not logged in."""


class HubUnavailableError(HubError, TransientError):
    """The Hub did not answer (network, 5xx); the same command again may work."""


class PushRefusedError(HubError, PermanentError):
    """narrator will not upload this dataset (it fails validation, or it is not annotated)."""
