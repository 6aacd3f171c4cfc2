"""Training configuration: every option of ``pyro-vae train``, validated on creation."""

import math
import numbers
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from pyro_vae.components.likelihoods import LIKELIHOODS
from pyro_vae.components.networks import ARCHITECTURES
from pyro_vae.components.priors import PRIORS
from pyro_vae.core.errors import ConfigError, ConfigTypeError
from pyro_vae.core.registry import parse_options
from pyro_vae.data.images import DATASETS, IMAGE_FILE_SUFFIX, ImageData, is_image_file, load_images
from pyro_vae.inference.objectives import OBJECTIVES
from pyro_vae.inference.schedules import LR_SCHEDULES
from pyro_vae.models.conditional import (
    ClassConditionalNormal,
    CompletionCVAE,
    LabelCVAE,
    check_observed_quadrants,
)
from pyro_vae.models.hierarchical import HierarchicalVAE
from pyro_vae.models.vae import VAE

BINARIZE_CHOICES = ("dynamic", "none")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
#: What training does on a non-finite loss or gradient (see :func:`pyro_vae.train`).
ON_NAN_CHOICES = ("stop", "rollback")
#: Seeds are handed to NumPy too, which takes 0 <= seed < 2**32.
MAX_SEED = 2**32 - 1
#: Fields set from the data when training starts (not options).
DATA_FIELDS = ("image_shape", "num_classes")
#: Fields that decide the model's parameters: a run initialized from another run
#: (``init_from``) must agree with it on these.
MODEL_FIELDS = (
    "model",
    "observed_quadrants",
    "conditional_prior",
    "latent_dim",
    "hidden_dims",
    "arch",
    "prior",
    "prior_options",
    "likelihood",
    "likelihood_options",
    *DATA_FIELDS,
)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was requested but no CUDA GPU is available; use --device cpu"
        )
    return torch.device(name)


# The prior and the likelihood go in by registry name with their options: each
# model builds them (priors.build_prior, likelihoods.build_likelihood) with the
# pieces only it knows, such as its encoder or the size of the data it models.


def _unconditional(model_class: type[VAE]) -> Callable[["TrainConfig"], VAE]:
    """The builder of a model of images alone (the VAE, the hierarchical VAE)."""

    def build(config: "TrainConfig") -> VAE:
        return model_class(
            config.data_dim,
            config.latent_dim,
            config.hidden_dims,
            image_shape=config.image_shape,
            arch=config.arch,
            prior=config.prior,
            likelihood=config.likelihood,
            prior_options=config.options("prior"),
            likelihood_options=config.options("likelihood"),
        )

    return build


def _label_cvae(config: "TrainConfig") -> LabelCVAE:
    return LabelCVAE(
        config.data_dim,
        config.num_classes,
        config.latent_dim,
        config.hidden_dims,
        prior=ClassConditionalNormal(config.num_classes, config.latent_dim)
        if config.conditional_prior
        else config.prior,
        likelihood=config.likelihood,
        prior_options=config.options("prior"),
        likelihood_options=config.options("likelihood"),
    )


def _completion(config: "TrainConfig") -> CompletionCVAE:
    return CompletionCVAE(
        config.image_shape,
        config.observed_quadrants,
        config.latent_dim,
        config.hidden_dims,
        likelihood=config.likelihood,
        likelihood_options=config.options("likelihood"),
    )


#: Registry of models by ``--model`` name: a builder from the configuration.
MODELS: dict[str, Callable[["TrainConfig"], VAE]] = {
    "vae": _unconditional(VAE),
    "hvae": _unconditional(HierarchicalVAE),
    "cvae": _label_cvae,
    "completion": _completion,
}
#: The models whose networks ``arch`` chooses (the conditional ones are MLPs over x and c).
ARCH_MODELS = ("vae", "hvae")


@dataclass
class TrainConfig:
    """What to train and how. Saved as ``config.json`` in the run directory."""

    model: str = "vae"
    #: Completion model: how many quadrants are observed (see pyro_vae.models.conditional).
    observed_quadrants: int = 1
    #: Label CVAE: learn p(z|y) per class instead of using --prior.
    conditional_prior: bool = False
    dataset: str = "fashion-mnist"
    data_root: str | None = None
    binarize: str = "dynamic"
    latent_dim: int = 50
    hidden_dims: tuple[int, ...] = (400,)
    #: Encoder/decoder family, a name in pyro_vae.components.networks.ARCHITECTURES (vae and hvae).
    arch: str = "mlp"
    prior: str = "normal"
    #: Options of the prior, by name, as its class declares them (``Prior.options``);
    #: the option ``components`` is ``--prior-components`` on the command line.
    prior_options: dict[str, Any] = field(default_factory=dict)
    likelihood: str = "bernoulli"
    #: Options of the likelihood, as its class declares them (``Likelihood.options``).
    likelihood_options: dict[str, Any] = field(default_factory=dict)
    objective: str = "elbo"
    particles: int = 1
    beta: float = 1.0
    warmup_epochs: int = 0
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    #: ``constant``, or ``plateau``: lr times ``lr_decay`` when the validation ELBO has
    #: not improved for ``lr_patience`` epochs (see pyro_vae.inference.schedules).
    lr_schedule: str = "constant"
    lr_decay: float = 0.5
    lr_patience: int = 10
    #: Clip the gradient of the per-example loss (the batch's summed loss over the batch
    #: size, so the limit does not depend on ``batch_size``) to this norm before each
    #: step; None: no clipping. Keeps a rare outlier batch from throwing Adam off.
    clip_grad_norm: float | None = None
    #: Decoupled weight decay (AdamW, Loshchilov & Hutter 2019): each step also shrinks
    #: every parameter by the factor ``1 - lr * weight_decay``, a pull towards small
    #: weights against overfitting; 0: plain Adam.
    weight_decay: float = 0.0
    #: Early stopping: stop when the validation ELBO has not improved for this many
    #: epochs (0: off). The best epoch's model is kept in ``best.pt`` either way.
    patience: int = 0
    seed: int = 0
    device: str = "auto"
    subset: int | None = None
    #: Also checkpoint every N optimizer steps (0: only at the end of each epoch).
    checkpoint_every: int = 0
    #: ``stop``: stop at a non-finite step; ``rollback``: restore the last checkpoint, halve lr.
    on_nan: str = "stop"
    #: On one GPU, replay each full-batch training step from a CUDA graph
    #: (pyro_vae.training.graphs): the same computation without Pyro's Python on every
    #: step. False: run steps eagerly.
    cuda_graph: bool = True
    #: Fine-tuning: start from the model of another run (a run directory, whose ``best.pt``
    #: is used, or a checkpoint file) instead of a fresh initialization. The optimizer,
    #: schedule, warm-up and epochs start anew; the models must agree on ``MODEL_FIELDS``.
    init_from: str | None = None
    #: Set from the data when training starts (flattened size = product).
    image_shape: tuple[int, ...] = (1, 28, 28)
    num_classes: int = 10

    def __post_init__(self) -> None:
        for declared in fields(self):
            setattr(self, declared.name, _coerce(declared, getattr(self, declared.name)))
        for name in (
            "latent_dim",
            "epochs",
            "batch_size",
            "particles",
        ):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(
                    f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}"
                )
        if any(width <= 0 for width in self.hidden_dims):
            raise ConfigError(f"hidden-dim widths must be positive, got {list(self.hidden_dims)}")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ConfigError(
                f"beta must be a positive number (it scales the KL term), got {self.beta}"
            )
        if self.warmup_epochs < 0:
            raise ConfigError(f"warmup-epochs must be 0 or more, got {self.warmup_epochs}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if not 0 < self.lr_decay < 1:
            raise ConfigError(
                f"lr-decay must be between 0 and 1 (it multiplies the lr), got {self.lr_decay}"
            )
        if self.clip_grad_norm is not None and not (
            math.isfinite(self.clip_grad_norm) and self.clip_grad_norm > 0
        ):
            raise ConfigError(
                "clip-grad-norm must be a positive number (omit it for no clipping), "
                f"got {self.clip_grad_norm}"
            )
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight-decay must be 0 or more, got {self.weight_decay}")
        for name in ("lr_patience", "patience"):
            if getattr(self, name) < 0:
                raise ConfigError(
                    f"{name.replace('_', '-')} must be 0 or more, got {getattr(self, name)}"
                )
        if self.subset is not None and self.subset <= 0:
            raise ConfigError(f"subset must be positive, got {self.subset}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be between 0 and {MAX_SEED}, got {self.seed}")
        if self.checkpoint_every < 0:
            raise ConfigError(
                "checkpoint-every must be 0 (only at epoch ends) or more, "
                f"got {self.checkpoint_every}"
            )
        if is_image_file(self.dataset):  # the user's own images: kept as an absolute path,
            self.dataset = str(Path(self.dataset).expanduser().resolve())  # for evaluate/plot
        elif self.dataset not in DATASETS:
            raise ConfigError(
                f"unknown dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}, or "
                f"name a {IMAGE_FILE_SUFFIX} file of your images"
            )
        for name, choices in (
            ("model", tuple(MODELS)),
            ("arch", tuple(ARCHITECTURES)),
            ("binarize", BINARIZE_CHOICES),
            ("device", DEVICE_CHOICES),
            ("prior", tuple(PRIORS)),
            ("likelihood", tuple(LIKELIHOODS)),
            ("objective", tuple(OBJECTIVES)),
            ("lr_schedule", tuple(LR_SCHEDULES)),
            ("on_nan", ON_NAN_CHOICES),
        ):
            if getattr(self, name) not in choices:
                raise ConfigError(
                    f"unknown {name.replace('_', '-')} {getattr(self, name)!r}; "
                    f"choose one of: {', '.join(choices)}"
                )

        self.prior_options = parse_options(PRIORS, "prior", self.prior, self.prior_options)
        self.likelihood_options = parse_options(
            LIKELIHOODS, "likelihood", self.likelihood, self.likelihood_options
        )

        if self.objective == "iwae" and (self.beta != 1 or self.warmup_epochs):
            raise ConfigError(
                "--objective iwae has no separate KL term to scale; drop --beta/--warmup-epochs "
                "or use --objective elbo"
            )
        check_observed_quadrants(self.observed_quadrants)
        if self.arch != "mlp" and self.model not in ARCH_MODELS:
            raise ConfigError(
                f"--arch {self.arch} is available for --model {' and '.join(ARCH_MODELS)}; "
                f"the {self.model} model's networks are MLPs over the data and the condition. "
                "Drop --arch or choose one of those models"
            )
        if self.conditional_prior and self.model != "cvae":
            raise ConfigError("--conditional-prior learns p(z|y) over labels; use --model cvae")
        if self.prior != "normal" and self.learns_prior:
            raise ConfigError(
                f"--prior {self.prior} does not apply: this model learns its prior "
                "(p(z|y) with --conditional-prior, the prior network p(z|x_observed) with "
                "--model completion); drop --prior"
            )

    @property
    def learns_prior(self) -> bool:
        """Whether the model learns its own prior (p(z|y) with ``conditional_prior``, the
        completion model's prior network) instead of using ``prior``."""
        return self.conditional_prior or self.model == "completion"

    @property
    def data_dim(self) -> int:
        return math.prod(self.image_shape)

    def options(self, kind: str) -> dict[str, Any]:
        """The options given for the prior or the likelihood (``kind``), by option name."""
        return dict(getattr(self, f"{kind}_options"))

    def build_vae(self) -> VAE:
        """A freshly initialized model (``MODELS[self.model]``) of this configuration."""
        return MODELS[self.model](self)

    def load_data(self, device: torch.device | str = "cpu") -> ImageData:
        """The dataset this configuration trains on (``subset`` trims the training split only)."""
        return load_images(
            self.dataset,
            self.data_root,
            binarize=self.binarize == "dynamic",
            subset=self.subset,
            device=device,
        )

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


def _coerce(field: Field, value: Any) -> Any:
    """``value`` as the plain type ``field`` declares, or :class:`ConfigTypeError`.

    Accepts what a caller would reasonably pass (NumPy integers, ints for
    floats, lists for tuples, paths for strings) and rejects the rest, so a
    wrong type gets a message instead of a confusing error deep in training.
    """
    name, kind = field.name.replace("_", "-"), field.type
    args = typing.get_args(kind)
    if type(None) in args:  # ``X | None``
        if value is None:
            return None
        (kind,) = (arg for arg in args if arg is not type(None))
    if typing.get_origin(kind) is dict:
        if not (isinstance(value, Mapping) and all(isinstance(key, str) for key in value)):
            raise ConfigTypeError(
                f"{name} must be a dict of option names to values such as "
                f"{{'components': 10}}, got {value!r}"
            )
        return dict(value)
    if typing.get_origin(kind) is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
            raise ConfigTypeError(
                f"{name} must be a sequence of integers such as (400,), got {value!r}"
            )
        return tuple(_coerce_scalar(name, item, int) for item in value)
    return _coerce_scalar(name, value, kind)


def _coerce_scalar(name: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigTypeError(f"{name} must be True or False, got {value!r}")
        return value
    accepted = {
        int: numbers.Integral,
        float: numbers.Real,
        str: (str, os.PathLike),
    }[kind]
    if isinstance(value, bool) or not isinstance(value, accepted):
        wanted = {int: "an integer", float: "a number", str: "a string"}[kind]
        raise ConfigTypeError(f"{name} must be {wanted}, got {value!r} ({type(value).__name__})")
    return os.fspath(value) if kind is str else kind(value)
