"""Foundations every layer may use: errors, crash-safe files, seeding, registries and the
process group of data-parallel runs. Nothing here knows about models or data."""
