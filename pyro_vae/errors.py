"""Errors whose message tells the user what went wrong and how to fix it.

The CLI prints these as one line on stderr and exits with status 2; anything
else is a bug and keeps its traceback.
"""


class PyroVAEError(Exception):
    """Base class of the errors that are the user's to fix."""


class ConfigError(PyroVAEError, ValueError):
    """An option, argument or input value is invalid."""


class DatasetUnavailableError(PyroVAEError, FileNotFoundError):
    """No local copy of a dataset was found and it could not be downloaded."""


class CheckpointError(PyroVAEError, RuntimeError):
    """A run directory or checkpoint is missing, corrupted or does not match the request."""
