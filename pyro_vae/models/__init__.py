"""Pyro model/guide pairs built from components: the VAE, the two-level hierarchical VAE,
and the conditional VAEs (label-conditional, completion)."""

from pyro_vae.models.conditional import CompletionCVAE, LabelCVAE
from pyro_vae.models.hierarchical import HierarchicalVAE
from pyro_vae.models.vae import VAE

__all__ = ["VAE", "CompletionCVAE", "HierarchicalVAE", "LabelCVAE"]
