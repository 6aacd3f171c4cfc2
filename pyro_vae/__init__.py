"""pyro-vae: variational autoencoders written the probabilistic-programming way."""

__version__ = "0.1.0"

from pyro_vae.conditional import (  # noqa: E402
    ClassConditionalNormal,
    CompletionCVAE,
    ConditionalPrior,
    LabelCVAE,
)
from pyro_vae.config import MODELS, TrainConfig  # noqa: E402
from pyro_vae.data import ImageData, load_images  # noqa: E402
from pyro_vae.errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    ConfigTypeError,
    DatasetUnavailableError,
    NumericalError,
    PyroVAEError,
    TrainingInterrupted,
)
from pyro_vae.hierarchical import HierarchicalVAE  # noqa: E402
from pyro_vae.likelihoods import (  # noqa: E402
    LIKELIHOODS,
    AutoregressiveBernoulli,
    AutoregressiveBernoulliLikelihood,
    BernoulliLikelihood,
    BetaLikelihood,
    ContinuousBernoulliLikelihood,
    DiscretizedLogistic,
    DiscretizedLogisticLikelihood,
    GaussianLikelihood,
    LaplaceLikelihood,
    Likelihood,
    bits_per_dim,
)
from pyro_vae.networks import (  # noqa: E402
    ARCHITECTURES,
    Architecture,
    ConvArchitecture,
    ConvDecoder,
    ConvEncoder,
    Convolution,
    MLPDecoder,
    MLPEncoder,
)
from pyro_vae.priors import (  # noqa: E402
    PRIORS,
    FlowPrior,
    LearnedNormal,
    MixturePrior,
    NormalMixture,
    Prior,
    StandardNormal,
    VampPrior,
)
from pyro_vae.runs import load_run, read_config, read_metrics  # noqa: E402
from pyro_vae.training import train  # noqa: E402
from pyro_vae.vae import VAE  # noqa: E402

__all__ = [
    "ARCHITECTURES",
    "LIKELIHOODS",
    "MODELS",
    "PRIORS",
    "VAE",
    "Architecture",
    "AutoregressiveBernoulli",
    "AutoregressiveBernoulliLikelihood",
    "BernoulliLikelihood",
    "BetaLikelihood",
    "CheckpointError",
    "ClassConditionalNormal",
    "CompletionCVAE",
    "ConditionalPrior",
    "ConfigError",
    "ConfigTypeError",
    "ContinuousBernoulliLikelihood",
    "ConvArchitecture",
    "ConvDecoder",
    "ConvEncoder",
    "Convolution",
    "DatasetUnavailableError",
    "DiscretizedLogistic",
    "DiscretizedLogisticLikelihood",
    "FlowPrior",
    "GaussianLikelihood",
    "HierarchicalVAE",
    "ImageData",
    "LabelCVAE",
    "LaplaceLikelihood",
    "LearnedNormal",
    "Likelihood",
    "MLPDecoder",
    "MLPEncoder",
    "MixturePrior",
    "NormalMixture",
    "NumericalError",
    "Prior",
    "PyroVAEError",
    "StandardNormal",
    "TrainConfig",
    "TrainingInterrupted",
    "VampPrior",
    "__version__",
    "bits_per_dim",
    "load_images",
    "load_run",
    "read_config",
    "read_metrics",
    "train",
]
