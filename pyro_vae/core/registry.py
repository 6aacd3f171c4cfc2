"""Name lookup and option checks shared by the registries (priors, likelihoods, architectures).

A registry maps a CLI name to a class; each class lists in ``options`` the
keyword options it accepts. By convention option ``o`` of a ``kind`` is the
command-line flag ``--kind-o`` and the config field ``kind_o``
(``--prior-components`` reaches a prior as ``components``). These checks turn
a wrong name, or an option that does not apply, into a
:class:`~pyro_vae.core.errors.ConfigError` that names the fix.
"""

from collections.abc import Mapping
from typing import Any, TypeVar

from pyro_vae.core.errors import ConfigError

T = TypeVar("T")


def lookup(registry: Mapping[str, T], kind: str, name: str) -> T:
    """The entry registered as ``name``, or a :class:`ConfigError` listing the choices."""
    if name not in registry:
        raise ConfigError(f"unknown {kind} {name!r}; choose one of: {', '.join(registry)}")
    return registry[name]


def check_options(
    registry: Mapping[str, type], kind: str, name: str, options: Mapping[str, Any]
) -> None:
    """Raise :class:`ConfigError` if ``name``'s class does not accept one of ``options``."""
    accepted = lookup(registry, kind, name).options
    for option in options:
        if option not in accepted:
            users = [other for other, cls in registry.items() if option in cls.options]
            flag = f"--{kind}-{option}"
            applies = (
                f"it applies to: {', '.join(users)}" if users else "no registered one takes it"
            )
            raise ConfigError(
                f"the {name!r} {kind} takes no option {option!r} ({flag}); {applies}. "
                f"Drop {flag} or choose another --{kind}"
            )
