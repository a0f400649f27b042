"""Errors a user can act on: each message names the file, key and problem."""


class PipelineError(Exception):
    """Base class for errors reported to the user without a traceback."""


class ParamsError(PipelineError, ValueError):
    """A key of params.yaml is unknown or has a bad value."""


class DataError(PipelineError, ValueError):
    """An input file is missing, unreadable, corrupt or inconsistent."""


class ChecksumError(DataError):
    """A file's size or sha256 differs from the expected one."""


class CellsError(PipelineError, RuntimeError):
    """Some cells of a study failed; the finished ones are kept."""
