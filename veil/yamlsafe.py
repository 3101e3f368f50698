"""Limits for the YAML that Veil reads: config files and policy documents.

Why: YAML aliases let a few hundred bytes stand for billions of nodes ("billion laughs"). PyYAML
composes an alias as a shared reference, so parsing itself is cheap, but everything that walks
the result afterwards (the positioned policy builder, pydantic, JSON Schema, hashing for the
audit trail) expands it: one such file made ``veil policy lint`` use 4 GB for 38 s. Deep nesting
overflows the recursive composer, and a huge file is read whole into memory.

So before a document is composed, ``check`` streams PyYAML's *events* (the parser is a state
machine, linear in the input, and builds nothing) and refuses the document as soon as:

* the file is larger than ``MAX_BYTES`` (``read_limited`` never reads more than that);
* collections nest deeper than ``MAX_DEPTH``;
* the document, with every alias expanded, would have more than ``MAX_NODES`` nodes (an alias
  counts as the whole subtree of its anchor, so legitimate reuse of a small anchor still works);
* an alias refers to a collection that is still open (a recursive structure never ends).

It is not a parser of its own: PyYAML parses, this only counts. Errors are ``YamlLimitError``
with the position of the offending event; callers turn them into ``ConfigError``/``PolicyError``
naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

MAX_BYTES = 2 * 1024 * 1024  # a policy with long deny lists stays far below this
MAX_DEPTH = 64
MAX_NODES = 200_000

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "YamlLimitError", "check", "read_limited"]


class YamlLimitError(Exception):
    """A document exceeds a limit; ``line``/``column`` are 1-based when known."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


def read_limited(path: str | Path, max_bytes: int = MAX_BYTES) -> bytes:
    """The file's bytes, refusing (without reading further) a file larger than ``max_bytes``.

    ``OSError`` (missing, unreadable) propagates for the caller's own message.
    """
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise YamlLimitError(
            f"file is larger than {max_bytes} bytes, the limit for config and policy files; "
            "split it or remove what is not needed"
        )
    return data


@dataclass
class _Open:
    anchor: str | None
    nodes: int = 1  # the collection itself, plus everything inside it (aliases expanded)


def check(text: str, *, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> None:
    """Refuse ``text`` if it nests too deeply or expands to too many nodes (see module docstring).

    Syntax errors are left to the real load that follows (it reports them with a position), so
    a ``yaml.YAMLError`` raised while streaming events stops the check silently.
    """
    anchors: dict[str, int] = {}  # anchor -> expanded size of its node
    stack: list[_Open] = []
    open_anchors: set[str] = set()
    total = 0

    def add(n: int, event: yaml.Event) -> None:
        nonlocal total
        total += n
        if stack:
            stack[-1].nodes += n
        if total > max_nodes:
            raise _at(
                event,
                f"document expands to more than {max_nodes} nodes (aliases counted in full); "
                "this looks like an alias bomb. Write the values out or use fewer aliases",
            )

    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                anchor = event.anchor or ""
                if anchor in open_anchors:
                    raise _at(event, f"alias *{anchor} refers to a collection that contains it (recursive)")
                add(anchors.get(anchor, 1), event)
            elif isinstance(event, yaml.ScalarEvent):
                add(1, event)
                if event.anchor:
                    anchors[event.anchor] = 1
            elif isinstance(event, yaml.CollectionStartEvent):
                if len(stack) >= max_depth:
                    raise _at(event, f"collections nest deeper than {max_depth} levels")
                add(1, event)  # counted in the parent now; the frame collects the children
                stack.append(_Open(event.anchor))
                if event.anchor:
                    open_anchors.add(event.anchor)
            elif isinstance(event, yaml.CollectionEndEvent):
                frame = stack.pop()
                if stack:
                    stack[-1].nodes += frame.nodes - 1  # the children (the node itself was added)
                if frame.anchor:
                    open_anchors.discard(frame.anchor)
                    anchors[frame.anchor] = frame.nodes
    except yaml.YAMLError:
        return


def _at(event: yaml.Event, message: str) -> YamlLimitError:
    mark = event.start_mark
    if mark is None:
        return YamlLimitError(message)
    return YamlLimitError(message, mark.line + 1, mark.column + 1)
