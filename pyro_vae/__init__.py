"""pyro-vae: variational autoencoders written the probabilistic-programming way."""

__version__ = "0.1.0"

from pyro_vae.components.likelihoods import (  # noqa: E402
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
from pyro_vae.components.networks import (  # noqa: E402
    ARCHITECTURES,
    Architecture,
    ConvArchitecture,
    ConvDecoder,
    ConvEncoder,
    Convolution,
    MLPDecoder,
    MLPEncoder,
)
from pyro_vae.components.priors import (  # noqa: E402
    PRIORS,
    FlowPrior,
    LearnedNormal,
    MixturePrior,
    NormalMixture,
    Prior,
    StandardNormal,
    VampPrior,
)
from pyro_vae.config import MODELS, ModelConfig, TrainConfig  # noqa: E402
from pyro_vae.core.errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    ConfigTypeError,
    DatasetUnavailableError,
    NumericalError,
    OutputError,
    PyroVAEError,
    RunInUseError,
    TrainingInterrupted,
)
from pyro_vae.data.images import ImageData, load_images  # noqa: E402
from pyro_vae.models.conditional import (  # noqa: E402
    ClassConditionalNormal,
    CompletionCVAE,
    ConditionalPrior,
    LabelCVAE,
)
from pyro_vae.models.hierarchical import HierarchicalVAE  # noqa: E402
from pyro_vae.models.vae import VAE  # noqa: E402
from pyro_vae.runs import Run, load_run, read_config, read_metrics  # noqa: E402
from pyro_vae.training.fit import train  # noqa: E402

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
    "ModelConfig",
    "NormalMixture",
    "NumericalError",
    "OutputError",
    "Prior",
    "PyroVAEError",
    "RunInUseError",
    "Run",
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
