"""Dotted keys of nested configs (``task.n_shots``): the one flattening the pre-flight, its
error messages and the resume check share."""
from __future__ import annotations

from typing import Any, Iterator, Mapping

__all__ = ["leaves", "leaf_keys", "all_keys", "lookup", "as_lists"]


def leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf; a non-empty mapping is descended into, an empty one is
    a leaf: ``{'a': {'b': 1}, 'c': {}}`` -> ``('a.b', 1), ('c', {})``."""
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from leaves(value, dotted + ".")
        else:
            yield dotted, value


def leaf_keys(tree: Mapping[str, Any]) -> list[str]:
    """The dotted keys of :func:`leaves`, in order."""
    return [key for key, _ in leaves(tree)]


def all_keys(tree: Mapping[str, Any]) -> set[str]:
    """Every dotted key, groups included: ``{'task': {'n_ways': 1}}`` -> ``{'task', 'task.n_ways'}``."""
    out: set[str] = set()
    for leaf in leaf_keys(tree):
        parts = leaf.split(".")
        out.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return out


def lookup(tree: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted key (``KeyError`` when a part is missing)."""
    node: Any = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def as_lists(value: Any) -> Any:
    """Tuples (and lists) as lists, nested ones too: a config value compares equal whether a
    snapshot stored it as a tuple or a list."""
    if isinstance(value, (list, tuple)):
        return [as_lists(v) for v in value]
    return value
