"""The ``substitution`` section: how a real value is written into each tool argument.

A rule names destination tools and argument paths and the context values are written for there
(``sql``, ``json``, ``shell`` or ``raw``; see ``veil.tokenizer.substitute``). The first rule that
matches decides, as in ``flows`` and ``access``. With no matching rule an argument named ``sql``,
``query`` or ``statement`` is SQL (``default:sql-name``) and every other one raw (``default:raw``),
so a database tool is safe without any policy and a search tool's ``query`` needs one rule saying
``substitute: raw``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from veil.policies.matching import ArgSet, GlobSet, normalise_arg_path
from veil.tokenizer.substitute import default_context


@dataclass(frozen=True)
class SubstitutionRule:
    index: int
    id: str
    tools: GlobSet
    args: ArgSet
    context: str  # "sql" | "json" | "shell" | "raw"
    description: str | None = None
    line: int | None = None

    @property
    def ref(self) -> str:
        return f"substitution[{self.index}]:{self.id}"


def substitution_context(rules: Iterable[SubstitutionRule], upstream: str, tool: str, arg_path: str) -> tuple[str, str]:
    """(context, rule ref) for argument ``arg_path`` of ``upstream__tool``: first match wins."""
    dest = f"{upstream}__{tool}"
    path = normalise_arg_path(arg_path)
    for rule in rules:
        if rule.tools.matches(dest) and rule.args.matches(path):
            return rule.context, rule.ref
    context = default_context(path)
    return context, "default:sql-name" if context == "sql" else "default:raw"
