"""Checks of argument values, shared by the options (:mod:`pyro_vae.config`) and the
classes and functions that take the same values directly (``VAE(latent_dim=...)``).

A check raises ``ValueError("must be ...")``; :func:`check_value` names the parameter.
"""

import math
from collections.abc import Callable
from typing import Any

from pyro_vae.core.errors import ConfigError

#: Seeds are handed to NumPy too, which takes 0 <= seed < 2**32.
MAX_SEED = 2**32 - 1

Check = Callable[[Any], None]


def positive(value: Any) -> None:
    if value <= 0:
        raise ValueError(f"must be positive, got {value}")


def zero_or_more(value: Any) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"must be 0 or more, got {value}")


def positive_number(value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"must be a positive number, got {value}")


def fraction(value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"must be between 0 and 1, got {value}")


def seed_range(value: int) -> None:
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"must be between 0 and {MAX_SEED}, got {value}")


def positive_widths(value: tuple[int, ...]) -> None:
    if any(width <= 0 for width in value):
        raise ValueError(f"widths must be positive, got {list(value)}")


def check_value(name: str, value: Any, check: Check) -> None:
    """``check(value)``, its ``ValueError`` as a :class:`ConfigError` naming ``name``."""
    try:
        check(value)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"`{name}` {error}") from None
