"""One registry type for every pluggable kind: methods, data sets, backbones, stages, executors,
saliency methods and hardware profiles.

A `Registry` maps names to items. `register` refuses a second, different item under a taken
name; `get` (and `registry[name]`) raises one "unknown <kind> 'x'; known: a, b, c" error for every
kind; `names(pattern)` filters with shell wildcards (``mobilenet*``). Items come from two places,
read on the first lookup: the built-in modules of the kind (importing a module registers what it
defines) and third-party packages, through the Python entry-point group ``medq_bench.<group>``,
whose entry points each name a module to import (it registers its items the same way). Modelled
on timm's ``timm/models/_registry.py`` (register, list with wildcards) and pytest's entry-point
plugins.

Registering never imports anything, and a lookup imports only the kind's light declaration
modules: every kind must be declared without torch (grids are planned without it).
"""

from __future__ import annotations

import fnmatch
import importlib
import re
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from typing import Any, Generic, TypeVar

from bench.errors import ConfigError, UsageError

T = TypeVar("T")

ENTRY_POINT_PREFIX = "medq_bench."
WILDCARDS = frozenset("*?[")
_REQUIRED: Any = object()


class UnknownNameError(ConfigError, KeyError):
    """A name no item of the kind is registered under (a KeyError too, so a registry reads like
    a mapping)."""

    def __str__(self) -> str:
        return str(self.args[0])


class RegistryError(UsageError):
    """A name registered twice, or a plugin that cannot be loaded."""


class PatternError(UsageError):
    """A shell-wildcard pattern that matches nothing by construction (an invalid class)."""


def has_wildcards(pattern: str) -> bool:
    return any(c in WILDCARDS for c in pattern)


def pattern_regex(pattern: str) -> str:
    """The anchored regular expression (POSIX and Python alike) of a shell-wildcard pattern:
    ``*`` any run, ``?`` one character, ``[...]`` a class (``[!...]`` its complement).
    PatternError, naming the pattern, if the expression is invalid (a range such as ``z-a``)."""
    out, i = ["^"], 0
    while i < len(pattern):
        c = pattern[i]
        end = pattern.find("]", i + 2) if c == "[" else -1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif end > 0:
            body = pattern[i + 1:end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    regex = "".join(out) + "$"
    try:
        re.compile(regex)
    except re.error as err:
        raise PatternError(f"invalid pattern {pattern!r}: {err}") from err
    return regex


def matching(patterns: Iterable[str], names: Iterable[str]) -> list[str]:
    """The names (in their order) that match at least one of the shell-wildcard patterns."""
    patterns = list(patterns)
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


class Registry(Generic[T]):
    """Items of one pluggable kind by name.

    kind: the kind in words, for messages ("method", "data set"); group: the entry-point group
    after ``medq_bench.`` ("methods"); builtins: the modules that register the built-in items,
    or a function that registers them and lists such modules (run on the first lookup);
    unknown: the UnknownNameError subclass a lookup of an unknown name raises.
    """

    def __init__(self, kind: str, group: str,
                 builtins: Iterable[str] | Callable[[], Iterable[str]] = (),
                 unknown: type[UnknownNameError] = UnknownNameError) -> None:
        self.kind = kind
        self.group = ENTRY_POINT_PREFIX + group
        self._builtins = builtins
        self._unknown = unknown
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str, item: T) -> T:
        """Add ``item`` as ``name``; registering an equal item again is a no-op, a different
        one a RegistryError."""
        old = self._items.get(name)
        if old is not None and old != item:
            raise RegistryError(f"{self.kind} '{name}' is registered twice "
                                f"({_origin(old)} and {_origin(item)})")
        self._items[name] = item
        return item

    def get(self, name: str, default: Any = _REQUIRED) -> T:
        """The item called ``name``; UnknownNameError (exit code 2) naming the known ones, or
        ``default`` where one is given."""
        self.load()
        try:
            return self._items[name]
        except KeyError:
            if default is not _REQUIRED:
                return default
            known = ", ".join(sorted(self._items)) or "none"
            raise self._unknown(f"unknown {self.kind} '{name}'; known: {known}") from None

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __setitem__(self, name: str, item: T) -> None:
        """Replace (or add) ``name``'s item without `register`'s duplicate check: for tests
        (``monkeypatch.setitem``) and deliberate overrides."""
        self.load()
        self._items[name] = item

    def __delitem__(self, name: str) -> None:
        self.load()
        del self._items[name]

    def names(self, pattern: str | Iterable[str] | None = None) -> list[str]:
        """Sorted names, all or those matching the shell-wildcard pattern(s)."""
        self.load()
        names = sorted(self._items)
        if pattern is None:
            return names
        return matching([pattern] if isinstance(pattern, str) else pattern, names)

    def select(self, patterns: Iterable[str]) -> list[str]:
        """The sorted names matching the patterns; UnknownNameError for a pattern that matches
        no name (a plain name is looked up, a wildcard one must match at least one)."""
        chosen: set[str] = set()
        for pattern in patterns:
            found = self.names(pattern)
            if not found:
                if not has_wildcards(pattern):
                    self.get(pattern)
                raise self._unknown(f"no {self.kind} matches '{pattern}'; known: "
                                       f"{', '.join(self.names())}")
            chosen.update(found)
        return sorted(chosen)

    def items(self) -> list[tuple[str, T]]:
        self.load()
        return sorted(self._items.items())

    def values(self) -> list[T]:
        return [item for _, item in self.items()]

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.load()
        return len(self._items)

    def load(self) -> None:
        """Import the built-in modules and the plugins' (once; again after a failure)."""
        if self._loaded:
            return
        self._loaded = True
        try:
            modules = self._builtins() if callable(self._builtins) else self._builtins
            for module in modules:
                importlib.import_module(module)
            for entry in metadata.entry_points(group=self.group):
                self._load_plugin(entry)
        except BaseException:
            self._loaded = False
            raise

    def _load_plugin(self, entry: metadata.EntryPoint) -> None:
        try:
            entry.load()
        except Exception as err:  # a broken plugin must say which one it is
            raise RegistryError(
                f"{self.kind} plugin '{entry.name}' ({entry.value}, entry point group "
                f"{self.group}) failed to load: {type(err).__name__}: {err}") from err

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._items)} registered)"


def _origin(item: object) -> str:
    """Where an item was defined, for the duplicate message: a class's or function's module,
    else that of the first function (or "module:function" place) among its fields, else the
    item itself (a profile's file)."""
    if isinstance(item, type) or callable(item):
        return f"from {item.__module__}"
    for value in getattr(item, "__dict__", {}).values():
        if callable(value) and hasattr(value, "__module__"):
            return f"from {value.__module__}"
        if isinstance(value, str) and ":" in value:
            return f"from {value.partition(':')[0]}"
    module = type(item).__module__
    return f"from {module}" if module not in ("builtins", "pathlib") else str(item)
