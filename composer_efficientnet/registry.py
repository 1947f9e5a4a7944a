"""Registries that let a YAML recipe select models, algorithms, optimizers, schedulers, data, callbacks
and loggers by name.

One registry per kind, built on ``catalogue`` as LLM Foundry's are. Each is open to other packages through
the entry point group ``composer_efficientnet.<kind>``: declaring, in another distribution,

.. code-block:: toml

    [project.entry-points."composer_efficientnet.models"]
    my_net = "my_package.models:build_my_net"

makes ``model: {my_net: {...}}`` work in a recipe, with no change here.
"""

from __future__ import annotations

import difflib
from importlib.metadata import entry_points
from typing import Any, Callable, Dict, List

import catalogue

__all__ = ['Registry', 'RegistryError', 'models', 'algorithms', 'callbacks', 'loggers', 'optimizers', 'schedulers',
           'datasets', 'REGISTRIES']


class RegistryError(KeyError):
    """An unknown registered name; the message lists the valid names and the closest match."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(catalogue.Registry):
    """A described registry of one kind whose names also resolve from an entry point group."""

    def __init__(self, kind: str, description: str) -> None:
        super().__init__(('composer_efficientnet', kind), entry_points=True)
        self.kind = kind
        self.description = description
        self.entry_point_namespace = f'composer_efficientnet.{kind}'

    def _get_entry_points(self) -> List[Any]:
        # Read live rather than catalogue's import-time snapshot, so distributions installed later are seen.
        return list(entry_points(group=self.entry_point_namespace))

    def names(self) -> List[str]:
        """Every registered name, built-in and from entry points, sorted."""
        builtin = [keys[-1] for keys in catalogue.REGISTRY if tuple(keys[:-1]) == tuple(self.namespace)]
        return sorted(set(builtin) | {ep.name for ep in self._get_entry_points()})

    def get(self, name: str) -> Callable[..., Any]:
        """The object registered as ``name``; an unknown name, or an entry point that cannot be loaded, raises
        :class:`RegistryError` saying which."""
        try:
            if name in self:
                return super().get(name)
        except ImportError as error:  # an entry point naming a module or object its distribution lacks
            point = next((ep.value for ep in self._get_entry_points() if ep.name == name), '?')
            raise RegistryError(f"'{name}' is registered by the entry point {point} "
                                f"(group {self.entry_point_namespace}), which cannot be loaded: {error}") from None
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ''
        raise RegistryError(f"Unknown {self.kind[:-1] if self.kind.endswith('s') else self.kind} '{name}'.{hint} "
                            f"Registered {self.kind}: {', '.join(self.names())}.")

    def get_all(self) -> Dict[str, Any]:
        return {name: self.get(name) for name in self.names()}


models = Registry('models', 'Builders of ComposerModels: name -> callable(**params) returning a ComposerModel.')
algorithms = Registry('algorithms', 'Composer algorithms: name -> Algorithm class, called with its parameters.')
callbacks = Registry('callbacks', 'Composer callbacks: name -> Callback class, called with its parameters.')
loggers = Registry('loggers', 'Composer logger destinations: name -> LoggerDestination class.')
optimizers = Registry('optimizers', 'Optimizers: name -> class called as cls(model.parameters(), **params).')
schedulers = Registry('schedulers', 'LR schedulers: name -> Composer scheduler class called with its parameters.')
datasets = Registry('datasets', 'Data: name -> builder(**params, batch_size=..., ...) returning a Composer DataSpec.')

REGISTRIES: Dict[str, Registry] = {r.kind: r for r in (models, algorithms, callbacks, loggers, optimizers, schedulers,
                                                       datasets)}

from composer_efficientnet import _builtins  # noqa: E402,F401  (fills the registries above)
