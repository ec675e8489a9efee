"""The errors gradflow raises on purpose.

Every complaint about what a user passed in (an argument, a config file, a data file, an output
path) is an :class:`InvalidInputError`. It subclasses ``ValueError``, so ``except ValueError``
keeps working, and the command line turns exactly these into one line and exit status 2. Any
other exception is a failure of gradflow itself (exit status 1).
"""
from __future__ import annotations


class GradflowError(Exception):
    """Base class of the errors gradflow raises on purpose."""


class InvalidInputError(GradflowError, ValueError):
    """A value a user gave is not acceptable; the message names the field and the value."""


class ConfigError(InvalidInputError):
    """A TOML file (model config or sweep grid) does not follow its schema."""


class FileFormatError(InvalidInputError):
    """A file to read is missing, unreadable, or not what gradflow wrote."""


class OutputPathError(InvalidInputError):
    """An output path cannot be written (missing directory, not writable, not a regular file)."""


__all__ = ["ConfigError", "FileFormatError", "GradflowError", "InvalidInputError", "OutputPathError"]
