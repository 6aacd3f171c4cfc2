"""Figures of runs: reconstructions, samples, latent maps, curves and comparisons."""
