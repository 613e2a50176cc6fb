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
    """400/422: the server refused the request itself; sending it again will not help."""


class BadAnswerError(VLMError, PermanentError):
    """The model answered, but even after one corrective retry the answer is unusable."""


# --- contract ----------------------------------------------------------------------------


class ContractError(PermanentError):
    """Rows that break the data contract of SPEC section 2 or the rules of section 4."""


# --- jobs --------------------------------------------------------------------------------


class ModuleFailedError(PermanentError):
    """Every item a module asked for one episode failed: the job fails instead of staging an
    empty result (a wrong model or API key must not produce an empty dataset)."""
