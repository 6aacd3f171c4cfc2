"""Training configuration: every option of ``pyro-vae train``, validated on creation."""

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from pyro_vae.config.data import DataConfig
from pyro_vae.config.fields import OPTIMIZATION, RUN, option
from pyro_vae.config.model import ModelConfig
from pyro_vae.core.checks import fraction, positive, positive_number, seed_range, zero_or_more
from pyro_vae.core.errors import ConfigError, ConfigTypeError
from pyro_vae.inference.objectives import OBJECTIVES
from pyro_vae.inference.schedules import LR_SCHEDULES
from pyro_vae.models.vae import VAE

DEVICE_CHOICES = ("auto", "cpu", "cuda")
#: What training does on a non-finite loss or gradient (see :func:`pyro_vae.train`).
ON_NAN_CHOICES = ("stop", "rollback")
#: Fields set from the data when training starts (not options).
DATA_FIELDS = ("image_shape", "num_classes", "table")
#: Fields that decide the model's parameters: a run initialized from another run
#: (``init_from``) must agree with it on these.
MODEL_FIELDS = (*(f.name for f in fields(ModelConfig)), *DATA_FIELDS)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "`device='cuda'` was requested but no CUDA GPU is available; use `device='cpu'`"
        )
    return torch.device(name)


@dataclass
class TrainConfig(ModelConfig, DataConfig):
    """What to train (the :class:`ModelConfig` options), on what (the :class:`DataConfig`
    options) and how. Saved as ``config.json``
    in the run directory; every field but the data's facts is a ``pyro-vae train`` option."""

    objective: str = option("elbo", "the objective", group=OPTIMIZATION, choices=OBJECTIVES)
    particles: int = option(
        1,
        "samples of z per example in the objective",
        group=OPTIMIZATION,
        check=positive,
        metavar="K",
    )
    beta: float = option(
        1.0, "weight of the KL term (beta-VAE)", group=OPTIMIZATION, check=positive_number
    )
    warmup_epochs: int = option(
        0,
        "raise beta linearly from ~0 to `beta` over this many epochs (0: off)",
        group=OPTIMIZATION,
        check=zero_or_more,
    )
    epochs: int = option(10, "number of epochs", group=OPTIMIZATION, check=positive)
    batch_size: int = option(128, "batch size", group=OPTIMIZATION, check=positive)
    lr: float = option(1e-3, "Adam learning rate", group=OPTIMIZATION, check=positive_number)
    lr_schedule: str = option(
        "constant", "learning-rate schedule", group=OPTIMIZATION, choices=LR_SCHEDULES
    )
    lr_decay: float = option(
        0.5, "factor of `lr_schedule='plateau'`", group=OPTIMIZATION, check=fraction
    )
    lr_patience: int = option(
        10,
        "epochs without improvement before `lr_schedule='plateau'` lowers the lr",
        group=OPTIMIZATION,
        check=zero_or_more,
        metavar="EPOCHS",
    )
    clip_grad_norm: float | None = option(
        None,
        "clip the gradient of the per-example loss (the batch's summed loss over the batch "
        "size, so the limit does not depend on `batch_size`) to this norm before each step "
        "(default: no clipping); the epoch log counts the clipped steps",
        group=OPTIMIZATION,
        check=positive_number,
        metavar="NORM",
    )
    weight_decay: float = option(
        0.0,
        "decoupled weight decay (AdamW): each step also shrinks the parameters by the "
        "factor 1 - lr * WD, against overfitting (0: plain Adam)",
        group=OPTIMIZATION,
        check=zero_or_more,
        metavar="WD",
    )
    patience: int = option(
        0,
        "early stopping: stop when the validation ELBO has not improved for this many epochs "
        "(0: off); evaluate, plot and sample then use the best epoch (OUT/best.pt)",
        group=OPTIMIZATION,
        check=zero_or_more,
        metavar="EPOCHS",
    )
    seed: int = option(0, "random seed", group=RUN, check=seed_range)
    device: str = option(
        "auto", "auto: CUDA when available, else CPU", group=RUN, choices=DEVICE_CHOICES
    )
    checkpoint_every: int = option(
        0,
        "also checkpoint every N steps (0: only at the end of each epoch, and on Ctrl-C)",
        group=RUN,
        check=zero_or_more,
        metavar="N",
    )
    on_nan: str = option(
        "stop",
        "on a non-finite loss or gradient: stop (the last checkpoint stays good), or roll "
        "back to the last checkpoint and halve the learning rate",
        group=RUN,
        choices=ON_NAN_CHOICES,
    )
    cuda_graph: bool = option(
        True,
        "on one GPU, replay each full-batch training step from a CUDA graph "
        "(pyro_vae.training.graphs), the same computation without Pyro's Python on every "
        "step; off, every step runs eagerly (to debug a model that a graph records wrongly)",
        group=RUN,
        flag="no-cuda-graph",
    )
    record_forward: bool = option(
        True,
        "on a CPU, replay each full-batch training step (objective, backward, update) from "
        "an FX graph recorded at the second step (pyro_vae.training.graphs), the same "
        "operations without Pyro's, autograd's and the optimizer's Python on every step "
        "(with several processes, the forward pass only), and evaluate's passes likewise "
        "(on any device); off, all run eagerly (to debug a model that a recording gets "
        "wrong)",
        group=RUN,
        flag="no-record-forward",
    )
    init_from: str | None = option(
        None,
        "fine-tune: start from the model of another run (its directory, for its best.pt, or "
        "a checkpoint file); model options left out are that run's, those given must match "
        "them; optimizer and epochs start anew, e.g. to continue a trained VAE with "
        "`objective='iwae'`",
        group=RUN,
        metavar="RUN",
    )
    #: Set from the data when training starts (flattened size = product).
    image_shape: tuple[int, ...] = (1, 28, 28)
    num_classes: int = 10

    def check(self) -> None:
        super().check()
        self.check_data()
        if self.is_table and (self.model == "completion" or self.arch == "conv"):
            raise ConfigError(
                "`model='completion'` and `arch='conv'` need images; for a table use the "
                "vae, hvae or cvae model with mlp networks"
            )
        if self.labels is not None and self.model != "semi-supervised":
            raise ConfigError(
                "`labels` hides the other training labels, which only "
                "`model='semi-supervised'` can learn without; drop it or use that model"
            )
        if self.model == "semi-supervised" and self.objective != "elbo":
            raise ConfigError(
                "`model='semi-supervised'` trains on the ELBO with its label enumerated "
                "(TraceEnum_ELBO); drop `objective`"
            )
        if self.objective == "iwae" and (self.beta != 1 or self.warmup_epochs):
            raise ConfigError(
                "`objective='iwae'` has no separate KL term to scale; drop `beta` and "
                "`warmup_epochs` or use `objective='elbo'`"
            )

    def default_likelihood(self) -> str:
        return "mixed" if self.is_table else "bernoulli"

    @property
    def data_dim(self) -> int:
        return math.prod(self.image_shape)

    def build_vae(self) -> VAE:
        """A freshly initialized model of this configuration, for its data's facts."""
        return self.build(self.image_shape, self.num_classes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        if not isinstance(values, dict):
            raise ConfigTypeError(f"a config must be a dict, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)

    def differences(self, other: "TrainConfig", ignore: tuple[str, ...] = ()) -> dict[str, tuple]:
        """Fields whose values differ, as ``{name: (self's, other's)}``."""
        return {
            f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in fields(self)
            if f.name not in ignore and getattr(self, f.name) != getattr(other, f.name)
        }
