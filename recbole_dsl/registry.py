"""One small registry class for every extension point (losses, samplers, score adapters).

Names are the YAML values users type, so lookups fail loudly and list what exists.
"""
from __future__ import annotations

from typing import Callable, Dict, Generic, Iterable, TypeVar

from recbole_dsl.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, key: str):
        # `key` is the YAML key whose values this registry resolves; it goes into error messages.
        self.key = key
        self._entries: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.key}: '{name}' is registered twice")
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name) -> T:
        # names are strings; a list or dict from YAML is unhashable and would raise TypeError
        if not isinstance(name, str) or name not in self._entries:
            raise ConfigError(self.key, name, f"one of {self.names()}")
        return self._entries[name]

    def names(self) -> list:
        return sorted(self._entries)

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterable[str]:
        return iter(self.names())

    def items(self):
        return sorted(self._entries.items())
