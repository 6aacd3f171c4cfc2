"""What model to build: the model, its networks, prior and likelihood, with their options."""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from pyro_vae.components.likelihoods import LIKELIHOODS
from pyro_vae.components.networks import ARCHITECTURES
from pyro_vae.components.priors import PRIORS
from pyro_vae.config.fields import MODEL, check_fields, option
from pyro_vae.core.checks import positive, positive_number, positive_widths
from pyro_vae.core.errors import ConfigError
from pyro_vae.core.registry import Factory, parse_options
from pyro_vae.data.tables import TableSchema
from pyro_vae.models.conditional import (
    OBSERVED_QUADRANT_CHOICES,
    ClassConditionalNormal,
    CompletionCVAE,
    LabelCVAE,
)
from pyro_vae.models.hierarchical import HierarchicalVAE
from pyro_vae.models.semisupervised import SemiSupervisedVAE
from pyro_vae.models.vae import VAE

# The prior and the likelihood go in by registry name with their options: each
# model builds them (priors.build_prior, likelihoods.build_likelihood) with the
# pieces only it knows, such as its encoder or the size of the data it models.
Builder = Callable[["ModelConfig", tuple[int, ...], int], VAE]


def _unconditional(model_class: type[VAE]) -> Builder:
    """The builder of a model of images alone (the VAE, the hierarchical VAE)."""

    def build(config: "ModelConfig", image_shape: tuple[int, ...], num_classes: int) -> VAE:
        return model_class(
            math.prod(image_shape),
            config.latent_dim,
            config.hidden_dims,
            image_shape=image_shape,
            arch=config.arch,
            prior=config.prior,
            likelihood=config.likelihood,
            prior_options=dict(config.prior_options),
            likelihood_options=dict(config.likelihood_options),
            table=config.table_schema,
        )

    return build


def _label_cvae(config: "ModelConfig", image_shape: tuple[int, ...], num_classes: int) -> VAE:
    return LabelCVAE(
        math.prod(image_shape),
        num_classes,
        config.latent_dim,
        config.hidden_dims,
        prior=ClassConditionalNormal(num_classes, config.latent_dim)
        if config.conditional_prior
        else config.prior,
        likelihood=config.likelihood,
        prior_options=dict(config.prior_options),
        likelihood_options=dict(config.likelihood_options),
        table=config.table_schema,
    )


def _semi_supervised(config: "ModelConfig", image_shape: tuple[int, ...], num_classes: int) -> VAE:
    return SemiSupervisedVAE(
        math.prod(image_shape),
        num_classes,
        config.latent_dim,
        config.hidden_dims,
        classifier_weight=config.classifier_weight or 1.0,  # set from the data by train()
        prior=config.prior,
        likelihood=config.likelihood,
        prior_options=dict(config.prior_options),
        likelihood_options=dict(config.likelihood_options),
        table=config.table_schema,
    )


def _completion(config: "ModelConfig", image_shape: tuple[int, ...], num_classes: int) -> VAE:
    return CompletionCVAE(
        image_shape,
        config.observed_quadrants,
        config.latent_dim,
        config.hidden_dims,
        likelihood=config.likelihood,
        likelihood_options=dict(config.likelihood_options),
    )


#: Registry of models by name: a builder ``(config, image_shape, num_classes) -> model``.
MODELS: dict[str, Factory[VAE]] = {
    "vae": Factory(_unconditional(VAE), "p(x)"),
    "hvae": Factory(
        _unconditional(HierarchicalVAE),
        "two-level hierarchical VAE p(z2) p(z1|z2) p(x|z1,z2) (Tomczak & Welling 2018; "
        "`prior` is p(z2))",
    ),
    "cvae": Factory(_label_cvae, "label-conditional p(x|y)"),
    "completion": Factory(
        _completion,
        "structured-output CVAE generating the missing quadrants of an image from the "
        "observed ones",
    ),
    "semi-supervised": Factory(
        _semi_supervised,
        "M2 of Kingma et al. (2014): p(y) p(z) p(x|y,z) with a classifier q(y|x), the "
        "label summed out by enumeration where `labels` leaves it unknown",
    ),
}
#: The models whose networks ``arch`` chooses (the conditional ones are MLPs over x and c).
ARCH_MODELS = ("vae", "hvae")


@dataclass
class ModelConfig:
    """What model to build (the model's own options, apart from how it is trained).

    Every field is an option declared once, with its help (``pyro-vae train --help``
    shows them in the group "model"); :meth:`build` makes the model for data of a
    given shape.
    """

    model: str = option("vae", "the model", group=MODEL, choices=MODELS)
    observed_quadrants: int = option(
        1,
        "completion: observed quadrants (1 bottom-left, 2 +top-left, 3 +top-right)",
        group=MODEL,
        choices=OBSERVED_QUADRANT_CHOICES,
    )
    conditional_prior: bool = option(
        False, "cvae: learn a Gaussian p(z|y) per class instead of using `prior`", group=MODEL
    )
    classifier_weight: float | None = option(
        None,
        "semi-supervised: alpha, the weight of log q(y|x) per labelled image (default: 0.1 x "
        "training images / labelled images, Kingma et al.'s alpha = 0.1 N on their "
        "objective summed over the data set)",
        group=MODEL,
        check=positive_number,
        metavar="ALPHA",
    )
    latent_dim: int = option(50, "size of z", group=MODEL, check=positive)
    hidden_dims: tuple[int, ...] = option(
        (400,),
        "widths of the encoder's fully connected hidden layers (the decoder mirrors them); "
        "with `arch='conv'`, those between the convolutions and the latent",
        group=MODEL,
        check=positive_widths,
        flag="hidden-dim",
        metavar="H",
    )
    arch: str = option(
        "mlp", "encoder/decoder networks (vae, hvae)", group=MODEL, choices=ARCHITECTURES
    )
    prior: str = option("normal", "prior p(z)", group=MODEL, choices=PRIORS)
    prior_options: dict[str, Any] = option(
        {}, "options of the prior, as its class declares them", group=MODEL, options_of=PRIORS
    )
    likelihood: str | None = option(
        None,
        "likelihood p(x|z) (default: bernoulli for images, mixed for tables)",
        group=MODEL,
        choices=LIKELIHOODS,
    )
    likelihood_options: dict[str, Any] = option(
        {}, "options of the likelihood", group=MODEL, options_of=LIKELIHOODS
    )
    #: Set from the data when training starts: the schema of a table
    #: (:meth:`~pyro_vae.data.tables.TableSchema.to_dict`), None for images.
    table: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Coerce and check every field, then how the model's options combine."""
        check_fields(self)
        self.likelihood = self.likelihood or self.default_likelihood()
        self.prior_options = parse_options(PRIORS, "prior", self.prior, self.prior_options)
        self.likelihood_options = parse_options(
            LIKELIHOODS, "likelihood", self.likelihood, self.likelihood_options
        )
        if self.arch != "mlp" and self.model not in ARCH_MODELS:
            raise ConfigError(
                f"`arch={self.arch!r}` is available for `model` {' and '.join(ARCH_MODELS)}; "
                f"the {self.model} model's networks are MLPs over the data and the condition. "
                "Drop `arch` or choose one of those models"
            )
        if self.classifier_weight is not None and self.model != "semi-supervised":
            raise ConfigError(
                "`classifier_weight` weighs the classifier of `model='semi-supervised'`; "
                "drop it or use that model"
            )
        if self.conditional_prior and self.model != "cvae":
            raise ConfigError(
                "`conditional_prior=True` learns p(z|y) over labels; use `model='cvae'`"
            )
        if self.prior != "normal" and self.learns_prior:
            raise ConfigError(
                f"`prior={self.prior!r}` does not apply: this model learns its prior "
                "(p(z|y) with `conditional_prior=True`, the prior network p(z|x_observed) "
                "with `model='completion'`); drop `prior`"
            )

    def default_likelihood(self) -> str:
        """The likelihood when none is given: ``mixed`` for a table, else ``bernoulli``."""
        return "bernoulli" if self.table is None else "mixed"

    @property
    def table_schema(self) -> TableSchema | None:
        """:attr:`table` as a :class:`~pyro_vae.data.tables.TableSchema`."""
        return None if self.table is None else TableSchema.from_dict(self.table)

    @property
    def learns_prior(self) -> bool:
        """Whether the model learns its own prior (p(z|y) with ``conditional_prior``, the
        completion model's prior network) instead of using ``prior``."""
        return self.conditional_prior or self.model == "completion"

    def build(self, image_shape: Sequence[int], num_classes: int) -> VAE:
        """A freshly initialized model of images of ``image_shape`` in ``num_classes``
        classes (``MODELS[self.model]``)."""
        return MODELS[self.model](self, tuple(image_shape), num_classes)

    def model_options(self) -> dict[str, Any]:
        """The values of this class's fields alone (of a :class:`TrainConfig` too)."""
        return {f.name: getattr(self, f.name) for f in fields(ModelConfig)}
