"""YAML loading that remembers where every node came from.

Security staff fix policies from error messages, so every schema or lint complaint must point at
``file:line:col``. PyYAML's composer keeps a start mark on each node; we build plain Python data
from the node tree ourselves and keep a map from each value's path (``("flows", 2, "when")``) to
the line and column of its value and of its key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from veil.errors import PolicyError

Path = tuple[str | int, ...]


@dataclass
class Located:
    """Parsed YAML plus 1-based (line, column) positions by path."""

    data: Any
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def at(self, path: Path, *, key: bool = False) -> tuple[int | None, int | None]:
        """Position of ``path`` (of its key when ``key``), else of the nearest ancestor that exists."""
        path = tuple(path)
        if key and path in self.keys:
            return self.keys[path]
        while path:
            if path in self.values:
                return self.values[path]
            path = path[:-1]
        return self.values.get((), (1, 1))


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def load_yaml(text: str, file: str) -> Located:
    """Parse one YAML document; syntax errors and duplicate keys become ``PolicyError`` with a position."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        located = Located(data=None)
        located.data = {} if root is None else _build(loader, root, (), located, file)
        return located
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise PolicyError(
            f"not valid YAML: {problem}",
            file=file,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        ) from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"not valid YAML: {exc}", file=file) from None
    finally:
        loader.dispose()


def _build(loader: yaml.SafeLoader, node: yaml.Node, path: Path, located: Located, file: str) -> Any:
    located.values[path] = _mark(node)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                line, col = _mark(key_node)
                raise PolicyError("mapping keys must be plain strings", file=file, line=line, column=col)
            key = loader.construct_object(key_node)
            if not isinstance(key, str):
                key = str(key)
            if key in out:
                line, col = _mark(key_node)
                raise PolicyError(f"duplicate key '{key}'", file=file, line=line, column=col)
            located.keys[(*path, key)] = _mark(key_node)
            out[key] = _build(loader, value_node, (*path, key), located, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, (*path, i), located, file) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
