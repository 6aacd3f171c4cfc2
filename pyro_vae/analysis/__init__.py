"""What a trained run tells: comparisons of runs and latent codes of images."""
