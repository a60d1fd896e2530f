"""The errors a user can cause, as one hierarchy the command line turns into one ``error:`` line.

Every check of user input (a config value, a file read back, a missing offline resource) raises a
subclass of :class:`UserError` with a message that names the setting or file, the value and what
is allowed. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: the message alone says what is wrong and how to fix it."""


class ConfigError(UserError):
    """A config value, type or key that is not allowed (raised before any work starts)."""


class IntegrityError(UserError):
    """A file read back (checkpoint, cache, split file, manifest) is damaged, altered or unsafe."""


class ResourceMissingError(UserError, FileNotFoundError):
    """A file or folder the run needs is not on this machine (weights, a dataset, a checkpoint)."""


class NonFiniteError(UserError):
    """Training produced a NaN or an infinity: the run stopped before it could become a result.

    Raised by the finite guard (:mod:`fedpurel_lite.engine.finite`) with a one-line message naming the
    round, the client, the quantity that went non-finite and the setting most likely at fault;
    nothing is written as a final result, and the checkpoints of the completed rounds are kept.

    Parameters
    ----------
    message : str
        One line.
    round_idx : int, optional
        The round it happened in, once known.
    """

    def __init__(self, message: str, round_idx: int | None = None) -> None:
        super().__init__(message)
        self.round_idx = round_idx
