"""Configuration fields that declare themselves: default, help, choices and check in one place.

Each field of :class:`~pyro_vae.config.ModelConfig` and
:class:`~pyro_vae.config.TrainConfig` is made by :func:`option`; its metadata is all
the command line needs to generate the field's flag (``pyro_vae.cli``), and all
:func:`check_fields` needs to coerce and validate a value.
"""

import numbers
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, Field, field, fields
from typing import Any

from pyro_vae.core.checks import Check
from pyro_vae.core.errors import ConfigError, ConfigTypeError

#: Command-line groups of the fields, in the order ``--help`` shows them.
DATA, MODEL, OPTIMIZATION, RUN = "data", "model", "objective and optimization", "run"


def option(
    default: Any,
    help: str,
    *,
    group: str,
    choices: Sequence[Any] | Mapping[str, Any] | None = None,
    check: Check | None = None,
    flag: str | None = None,
    metavar: str | None = None,
    options_of: Mapping[str, type] | None = None,
) -> Any:
    """A dataclass field that is an option of ``pyro-vae train``.

    :param default: its value when not given (a dict or tuple is copied per instance).
    :param help: what it does, for ``--help``; parameters named in backticks become flags.
    :param group: the ``--help`` group: :data:`DATA`, :data:`MODEL`, :data:`OPTIMIZATION`
        or :data:`RUN`.
    :param choices: the allowed values; a registry's names, each listed with its ``help``.
    :param check: raises ``ValueError("must be ...")`` for a bad value.
    :param flag: the flag's name without ``--`` when not the field's name with dashes
        (``no-NAME`` for a boolean that is on by default).
    :param metavar: the value's name in ``--help``.
    :param options_of: for a dict of a registered class's options, the registry: each
        option a class declares is a flag ``--KIND-OPTION`` of its own.
    """
    metadata = {"help": help, "group": group, "choices": choices, "check": check}
    metadata |= {"flag": flag, "metavar": metavar, "options_of": options_of}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def is_option(declared: Field) -> bool:
    """Whether a field is an option (made by :func:`option`) rather than set from the data."""
    return "help" in declared.metadata


def default_of(declared: Field) -> Any:
    if declared.default_factory is not MISSING:
        return declared.default_factory()
    return declared.default


def check_fields(config: Any) -> None:
    """Coerce every field of the dataclass ``config`` to its declared type, then check each
    option against its choices and check; :class:`ConfigError` names the first bad one."""
    for declared in fields(config):
        value = coerce(declared, getattr(config, declared.name))
        setattr(config, declared.name, value)
        if not is_option(declared) or value is None:
            continue
        choices = declared.metadata["choices"]
        if choices is not None and value not in choices:
            raise ConfigError(
                f"unknown `{declared.name}` {value!r}; choose one of: "
                f"{', '.join(map(str, choices))}"
            )
        if declared.metadata["check"] is not None:
            try:
                declared.metadata["check"](value)
            except ValueError as error:
                raise ConfigError(f"`{declared.name}` {error}") from None


def coerce(declared: Field, value: Any) -> Any:
    """``value`` as the plain type ``declared`` declares, or :class:`ConfigTypeError`.

    Accepts what a caller would reasonably pass (NumPy integers, ints for
    floats, lists for tuples, paths for strings) and rejects the rest, so a
    wrong type gets a message instead of a confusing error deep in training.
    """
    name, kind = f"`{declared.name}`", declared.type
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
