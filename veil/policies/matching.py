"""Glob sets for names and argument paths, with the "covers" relation lint uses for shadowing.

Names (tools written ``UPSTREAM__TOOL``, upstreams, principals) use shell-style globs matched
case-sensitively. Argument paths are dotted with list indexes (``customer.email``,
``recipients[0]``); in a pattern ``[*]`` stands for any index and ``*`` for any characters within
one segment. A path pattern also matches everything inside that argument: ``to`` covers
``to.address`` and ``to[1]``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable


class GlobSet:
    """Any-of a list of globs; ``None`` in the policy model stands for "everything"."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        # An empty set matches nothing (the schema requires at least one pattern anyway).
        self._rx = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in self.patterns) or "(?!)")

    def matches(self, name: str) -> bool:
        return self._rx.match(name) is not None

    def matches_any(self, names: Iterable[str]) -> bool:
        return any(self.matches(n) for n in names)

    def covers(self, other: GlobSet) -> bool:
        """True when every name ``other`` matches is (almost certainly) matched by us.

        Decided pattern by pattern: ours covers theirs if ours matches their text read literally
        (``mailer__*`` covers ``mailer__send_*``). Exact for the globs people write."""
        return all(self.matches(p) for p in other.patterns)

    def __str__(self) -> str:
        return ", ".join(self.patterns)


def normalise_arg_path(path: str) -> str:
    """Accept ``$.a.b``, ``$a`` and ``a.b`` alike."""
    if path.startswith("$"):
        path = path[1:]
    return path.lstrip(".")


def _arg_regex(pattern: str) -> str:
    out = re.escape(normalise_arg_path(pattern))
    out = out.replace(r"\[\*\]", r"\[\d+\]").replace(r"\*", r"[^.\[\]]*")
    return out


class ArgSet:
    """Any-of a list of argument-path patterns, each matching the argument and its contents."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        alternatives = "|".join(f"(?:{_arg_regex(p)})" for p in self.patterns) or "(?!)"
        self._rx = re.compile(rf"^(?:{alternatives})(?:[.\[].*)?$")

    def matches(self, path: str) -> bool:
        return self._rx.match(normalise_arg_path(path)) is not None

    def covers(self, other: ArgSet) -> bool:
        # Read their patterns literally, with their "[*]" as an index: "recipients[*]" -> "recipients[0]".
        return all(self.matches(p.replace("[*]", "[0]")) for p in other.patterns)

    def __str__(self) -> str:
        return ", ".join(self.patterns)
