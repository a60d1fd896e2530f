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
