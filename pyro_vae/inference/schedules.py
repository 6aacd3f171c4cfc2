r"""Learning-rate schedules of ``pyro-vae train --lr-schedule NAME``.

A schedule is stepped once per epoch with that epoch's validation ELBO:

* ``constant``: the learning rate stays as given;
* ``plateau``: :class:`torch.optim.lr_scheduler.ReduceLROnPlateau` on the
  validation ELBO, :math:`\eta \leftarrow \gamma\,\eta` (``lr_decay``) when it has not
  improved (risen at all) for ``lr_patience`` epochs.

Adding one is one factory ``(optimizer, decay, patience) -> scheduler`` plus one
registry line; a scheduler has ``step(val_elbo)``, ``state_dict()`` and
``load_state_dict()`` (its state goes into the checkpoint).
"""

from typing import Any, Protocol

import torch

from pyro_vae.core.registry import Factory


class EpochScheduler(Protocol):
    def step(self, metrics: float) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


class Constant:
    """The learning rate as given: a schedule that does nothing, and has no state."""

    def step(self, metrics: float) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


def _constant(optimizer: torch.optim.Optimizer, decay: float, patience: int) -> Constant:
    return Constant()


def _plateau(
    optimizer: torch.optim.Optimizer, decay: float, patience: int
) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    # "Improved" means strictly higher, as for early stopping (torch's default relative
    # threshold would count a slightly *lower* negative ELBO as an improvement).
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=decay, patience=patience, threshold=0, threshold_mode="abs"
    )


#: Registry: name -> factory ``(optimizer, decay, patience) -> scheduler``.
LR_SCHEDULES: dict[str, Factory[EpochScheduler]] = {
    "constant": Factory(_constant, "the lr as given"),
    "plateau": Factory(
        _plateau,
        "multiply the lr by `lr_decay` when the validation ELBO has not improved for "
        "`lr_patience` epochs",
    ),
}
