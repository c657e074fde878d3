"""The package's own exception types.

Every error a user can cause (bad file, bad value, bad option) is raised as one of these.
The CLI turns any :class:`Fmri2imgError` into exactly one line on stderr and exit code 2;
anything else is a bug and keeps its traceback.

Messages follow one rule: say what was given (file and/or value) and what was expected,
e.g. ``Expected a 3D mask, got shape (81, 104, 83, 2) from nsdgeneral.nii.gz.``
"""

from __future__ import annotations


class Fmri2imgError(Exception):
    """Base class of all user-facing errors (exit code 2)."""

    exit_code = 2


class InputError(Fmri2imgError, ValueError):
    """A value, option or file content is not what was expected."""


class MissingInputError(Fmri2imgError, FileNotFoundError):
    """A required file or folder does not exist."""

    def __str__(self) -> str:  # FileNotFoundError would otherwise format errno/filename
        return str(self.args[0]) if self.args else "missing input"


class CorruptFileError(InputError):
    """A file exists but cannot be decoded (truncated gzip, broken HDF5, bad Parquet...)."""


class ConfigError(InputError):
    """A config file or option is invalid (unknown key, wrong type, value out of range)."""


class SchemaError(InputError):
    """A table does not match the expected schema (columns, types, schema version)."""


class PathEscapeError(CorruptFileError):
    """A path stored in an artifact points outside its root (``../``, absolute)."""


class ChecksumError(InputError):
    """A file's content differs from the checksum recorded when it was produced."""


class MismatchError(InputError):
    """Two artifacts do not belong together (checkpoint vs index, adapter vs base...)."""


class OutputError(Fmri2imgError, OSError):
    """An output location cannot be written (exists without --force, not writable...)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "cannot write output"


class TrackingError(Fmri2imgError, RuntimeError):
    """The MLflow tracking store cannot be reached or used."""


class OfflineError(Fmri2imgError, RuntimeError):
    """Something needs the network (model weights from a hub) and none is available."""
