"""Fitting a model and writing its run: the loop, its step execution and CUDA graphs."""
