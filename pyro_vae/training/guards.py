"""What keeps a training run safe: stop signals, numerical checks and their diagnosis.

* SIGINT/SIGTERM become a request to stop after the current step (:class:`StopSignals`);
* a non-finite loss or update is named with its step and, where the batch holds NaN,
  blamed on the data (:func:`numerical_fault`), so that a rollback is only tried where
  it can help;
* the model and guide are checked once with all of Pyro's validation before training
  (:func:`check_model_and_guide`), and steps run without it (:func:`training_steps`).
"""

import signal
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyro
import torch

from pyro_vae import runs
from pyro_vae.core import distributed
from pyro_vae.core.errors import ConfigError, NumericalError, TrainingInterrupted
from pyro_vae.core.seeding import seeded
from pyro_vae.data.images import ImageData
from pyro_vae.models.vae import VAE, without_param_statements


def nonfinite_update(parameters: Sequence[torch.Tensor]) -> bool:
    """Whether an Adam step left NaN/infinite parameters: its gradient was not finite.

    The per-step check reads only the loss, which the running loss needs anyway, since
    scanning every gradient before each step would cost a host read per parameter. A
    non-finite gradient with a finite loss is still caught, one step later, and named
    with its own step: Adam turns an infinite or NaN gradient into NaN parameters,
    NaN propagates through every network here (``0 * nan`` is NaN), so the next loss is
    NaN, and this test on the parameters then tells a bad update from a bad loss. It
    also runs before every checkpoint, so a bad last step is never saved.
    """
    return bool(runs.nonfinite_entries(list(parameters)))


class StopSignals:
    """Turn SIGINT/SIGTERM into a request to stop after the current step.

    A second signal aborts at once with :class:`KeyboardInterrupt` (the
    checkpoint on disk, written atomically, stays intact). Outside the main
    thread signals cannot be caught and are left alone. With ``synced`` (several
    ranks) a signal is only ``received``; the training step shares it with the
    other ranks and sets ``signum`` on all of them at the same step.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, synced: bool = False):
        self.synced = synced

    def __enter__(self) -> "StopSignals":
        self.signum: int | None = None
        self.received: int | None = None
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        if not self.synced:
            self.signum = signum

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


@contextmanager
def training_steps(vae: VAE) -> Iterator[None]:
    """How the steps run: without Pyro's validation and without ``pyro.param`` statements.

    Validation is off so that a NaN reaches the loss, where the training loop
    reports it with its step (Pyro's distribution validation would raise a bare
    ``ValueError`` deep in the forward pass, and ``warn_if_nan`` print a warning),
    and because its per-step checks (argument and support checks, model/guide
    site matching, NaN scans) cost time on every step; :func:`check_model_and_guide`
    runs them once before training instead. The parameters are optimized by a
    torch optimizer, so Pyro's param statements are skipped too
    (:func:`~pyro_vae.models.vae.without_param_statements`).
    """
    with pyro.validation_enabled(False), without_param_statements(vae), warnings.catch_warnings():
        # Pyro's ELBOs (analytic-kl's TraceMeanField_ELBO) check the loss for NaN even
        # without validation
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        yield


def check_model_and_guide(vae: VAE, loss_fn: Callable[..., torch.Tensor], data: ImageData) -> None:
    """One objective evaluation with all of Pyro's validation on, on two validation examples
    (prepared like training batches), before training starts: a bad distribution argument
    fails with Pyro's message, and a model/guide site mismatch (which Pyro only warns about,
    and which would train the wrong objective) is a :class:`ConfigError`. The global RNG is
    left as it was (resuming stays exact)."""
    with (
        pyro.validation_enabled(True),
        seeded(0, data.val.device),
        torch.no_grad(),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        loss_fn(vae.model, vae.guide, *vae.batch_inputs(data.val[:2], data.val_labels[:2]))
    messages = [str(warning.message).replace("\n", " ") for warning in caught]
    mismatches = [text for text in messages if "but not guide" in text or "but not model" in text]
    if mismatches:
        raise ConfigError(
            f"the model and guide of {type(vae).__name__} do not match ({'; '.join(mismatches)}); "
            "every latent sample site of the model needs a guide site of the same name"
        )
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def numerical_fault(
    what: str,
    where: str,
    loss: float,
    kept: str,
    lr: float | None,
    batch: torch.Tensor | None = None,
    world: distributed.World = distributed.SINGLE,
) -> NumericalError:
    """The error for a non-finite ``what`` ("loss" or "gradient") at ``where``, diagnosed
    (this path is rare, so checks are cheap): a non-finite loss whose ``batch`` holds NaN
    is the data's fault, and no rollback can fix it.

    :param kept: where the last good checkpoint is, for the message.
    :param lr: the learning rate, to advise a lower one; None: no advice (a rollback
        lowers it).
    """
    bad_data = torch.zeros(1, device=batch.device if batch is not None else "cpu")
    if batch is not None:  # did any rank's share of the batch hold NaN? (every rank is here)
        bad_data[0] = float(not bool(torch.isfinite(batch).all()))
        world.sum_([bad_data])
    if bad_data.item():
        return NumericalError(
            f"non-finite {what} at {where}: the training batch holds NaN or infinite "
            f"values; {kept}. Fix the data, then continue with `resume=True`",
            recoverable=False,
        )
    advice = (
        f". Continue with `resume=True` and a lower `lr` (now {lr:g}), or with "
        "`on_nan='rollback'` to halve it automatically"
        if lr is not None
        else ""
    )
    return NumericalError(
        f"non-finite {what} (loss {loss:g}) at {where}; training stopped and {kept}{advice}"
    )


def interrupted(signum: int, saved_at: str, path: Path) -> TrainingInterrupted:
    """The error that ends a run stopped by ``signum`` after saving its checkpoint."""
    return TrainingInterrupted(
        f"stopped by {signal.Signals(signum).name} {saved_at}; the checkpoint is saved "
        f"in {path}; continue with the same arguments plus `resume=True`",
        signum,
    )
