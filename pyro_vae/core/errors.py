"""Errors whose message tells the user what went wrong and how to fix it.

The CLI prints these as one line on stderr and exits with status 2; anything
else is a bug and keeps its traceback. :class:`TrainingInterrupted` is not an
error: the CLI prints it as one line and exits with status ``128 + signal``.

Messages name parameters as Python spells them, in backticks: ```latent_dim```,
```resume=True```, ```objective='iwae'```, ```prior_options[components]```. The CLI
writes each as the flag of its command (``--latent-dim``, ``--resume``,
``--objective iwae``, ``--prior-components``), so one message serves both.
"""

import signal


def brief(error: BaseException) -> str:
    """An exception as a short one-line detail (torch's messages run to paragraphs)."""
    text = " ".join(str(error).split())
    first = text.split(". ")[0]
    return f"{type(error).__name__}: {first[:200]}{'...' if len(first) > 200 else ''}"


class PyroVAEError(Exception):
    """Base class of the errors that are the user's to fix."""


class ConfigError(PyroVAEError, ValueError):
    """An option, argument or input value is invalid."""


class ConfigTypeError(ConfigError, TypeError):
    """An option or argument has the wrong type (also a :class:`ConfigError`)."""


class DatasetUnavailableError(PyroVAEError, FileNotFoundError):
    """No local copy of a dataset was found, it could not be read, or not downloaded."""


class OutputError(PyroVAEError, OSError):
    """A file or folder could not be written: no space, a read-only or unwritable place,
    or a file or folder in the way. Whatever was there before is unchanged."""


class RunInUseError(PyroVAEError, RuntimeError):
    """Another process is training or evaluating in the same run directory."""


class CheckpointError(PyroVAEError, RuntimeError):
    """A run directory or checkpoint is missing, corrupted or does not match the request."""


class NumericalError(PyroVAEError, ArithmeticError):
    """Training produced a non-finite loss, gradient or state; the last good checkpoint is kept.

    ``recoverable`` is false when the cause is in the data, which a rollback
    with a smaller learning rate cannot fix.
    """

    def __init__(self, message: str, recoverable: bool = True):
        super().__init__(message)
        self.recoverable = recoverable


class TrainingInterrupted(KeyboardInterrupt):
    """Training or an evaluation stopped on SIGINT/SIGTERM after saving what it had done
    (a checkpoint to resume from, the images evaluated so far)."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum
