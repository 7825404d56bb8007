"""A tiny name -> factory registry (timm-style), one per component kind.

Components (margins, heads, encoders, metrics, data generators...) register
themselves with a decorator; configs name them by key. Tests parametrize over
``REGISTRY.names()`` so every registered item is exercised.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Generic, List, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name the user gave (a registry key, a task, a mode) that is not known: the message lists
    the known ones. The CLI prints it as one line (exit 2); other KeyErrors are internal bugs and
    keep their traceback."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A named mapping from string keys to factories (classes or functions)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("arcface")``; duplicate names are an error."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """Return the factory for ``name``; unknown names list the known ones."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def build(self, name: str, **kwargs: Any) -> Any:
        """Instantiate ``name`` with keyword arguments; bad keywords name the key."""
        factory: Any = self.get(name)
        try:
            return factory(**kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.kind} {name!r}: {exc}") from exc

    def names(self) -> List[str]:
        return sorted(self._items)

    def in_order(self) -> List[str]:
        """Names in registration order."""
        return list(self._items)

    def unregister(self, name: str) -> None:
        """Remove ``name`` if present (tests that register throw-away items clean up with it)."""
        self._items.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)
