"""Registries of swappable parts (models, priors, likelihoods, architectures, objectives,
schedules) and their options.

A registry maps a name to a class, an instance or a :class:`Factory`; each says what it
is in ``help`` (one line), which the command line's ``--help`` lists. A class also
declares the keyword options it accepts as :class:`Option` objects in ``options``:
that declaration is the only one. The command line is generated from it (option ``o``
of a ``kind`` is the flag ``--kind-o``), and :class:`~pyro_vae.config.TrainConfig`
keeps the values given in ``kind_options`` (``{"o": value}``). :func:`parse_options`
turns a wrong name, an option that does not apply, or a bad value into a
:class:`~pyro_vae.core.errors.ConfigError` that names the fix.
"""

import numbers
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pyro_vae.core.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Option:
    """A keyword option of a registered class.

    :param name: the keyword, e.g. ``"components"`` (flag ``--prior-components``).
    :param parse: turns a value, or the command line's text for it, into the option's
        value; raises ``ValueError`` (or :class:`ConfigError`) on a bad one.
    :param help: what the option does, with its default, for ``--help``.
    :param metavar: the value's name in ``--help``.
    """

    name: str
    parse: Callable[[Any], Any]
    help: str
    metavar: str = "VALUE"


@dataclass(frozen=True)
class Factory(Generic[T]):
    """A registered function with its one-line ``help``; calling it calls the function.

    :param make: the function, e.g. ``(num_particles) -> objective``.
    :param help: what it makes, for ``--help``.
    """

    make: Callable[..., T]
    help: str

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        return self.make(*args, **kwargs)


def registry_help(registry: Mapping[str, Any]) -> str:
    """The names of a registry with what each is (its ``help``), for ``--help``."""
    return "; ".join(
        f"{name} ({entry.help})" if getattr(entry, "help", "") else name
        for name, entry in registry.items()
    )


def positive_int(value: Any) -> int:
    """An integer above 0, from an integer or its text."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral | str):
        raise ValueError(f"must be an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"must be an integer, got {value!r}") from None
    if number <= 0:
        raise ValueError(f"must be positive, got {number}")
    return number


def lookup(registry: Mapping[str, T], kind: str, name: str) -> T:
    """The entry registered as ``name``, or a :class:`ConfigError` listing the choices."""
    if name not in registry:
        raise ConfigError(f"unknown `{kind}` {name!r}; choose one of: {', '.join(registry)}")
    return registry[name]


def declared_options(cls: type) -> dict[str, Option]:
    """The options ``cls`` declares, by name."""
    return {option.name: option for option in cls.options}


def registry_options(registry: Mapping[str, type]) -> Iterator[tuple[Option, dict[str, str]]]:
    """Every option name declared in ``registry``, once, with the help each class that
    declares it gives: ``(option, {class name: help})``, in registration order."""
    seen: dict[str, tuple[Option, dict[str, str]]] = {}
    for name, cls in registry.items():
        for option in cls.options:
            seen.setdefault(option.name, (option, {}))[1][name] = option.help
    yield from seen.values()


def check_option_names(
    registry: Mapping[str, type], kind: str, name: str, options: Mapping[str, Any]
) -> None:
    """Raise :class:`ConfigError` if ``name``'s class does not declare one of ``options``."""
    accepted = declared_options(lookup(registry, kind, name))
    for option in options:
        if option not in accepted:
            parameter = f"`{kind}_options[{option}]`"
            users = [other for other, cls in registry.items() if option in declared_options(cls)]
            applies = (
                f"it applies to: {', '.join(users)}" if users else "no registered one takes it"
            )
            raise ConfigError(
                f"the {name!r} {kind} takes no option {option!r} ({parameter}); {applies}. "
                f"Drop {parameter} or choose another `{kind}`"
            )


def parse_options(
    registry: Mapping[str, type], kind: str, name: str, options: Mapping[str, Any]
) -> dict[str, Any]:
    """``options`` for ``name``'s class, each value parsed by its :class:`Option`; a
    :class:`ConfigError` for an option the class does not take or a bad value."""
    check_option_names(registry, kind, name, options)
    accepted = declared_options(registry[name])
    parsed = {}
    for option, value in options.items():
        try:
            parsed[option] = accepted[option].parse(value)
        except ConfigError:
            raise
        except (TypeError, ValueError) as error:
            raise ConfigError(f"`{kind}_options[{option}]` {error}") from error
    return parsed
