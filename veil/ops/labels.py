"""Label values for metrics and span attributes: only names Veil or its configuration chose,
each from a bounded set.

Why: a metric label or span attribute is exported to systems outside the privacy boundary
(Prometheus, a tracing backend) and kept there for months. A value from a tool's arguments or
result must never become one, and neither may a name an upstream made up: a hostile upstream can
list a tool named after a customer, and an agent can send any method or tool name it likes. So:

* methods are the MCP methods Veil handles, anything else is ``other``;
* upstreams are the names in the config, anything else is empty;
* a tool is named only once the runner's ``admit`` stage found it in the session's catalogue
  (whose names went through the same tokenisation as the listings the agent sees), only if it is
  spelt like an MCP tool name (a name that had a value tokenised carries ``[`` and fails), and
  only for the first ``MAX_TOOLS`` such names in the process; else ``other``;
* entity types and refusal reasons must look like identifiers (``EMAIL_ADDRESS``,
  ``AccessDenied``, ``bad_key``) and are capped the same way.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

OTHER = "other"
MAX_TOOLS = 500
MAX_ENTITY_TYPES = 100
MAX_REASONS = 100

# What MCP allows in a tool name (letters, digits, ``_-.``), and Veil's prefixes use the same.
_TOOL = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_ENTITY = re.compile(r"^[A-Z][A-Z0-9_]{0,47}$")
_REASON = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")

# The MCP methods Veil handles from agents and upstreams (veil.proxy.methods.HANDLERS, with the
# notifications spelt out); the runner's flow.method for anything else is counted as "other".
METHODS = frozenset(
    {
        "ping",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "notifications/message",
        "notifications/progress",
        "notifications/cancelled",
        "notifications/resources/updated",
        "notifications/resources/list_changed",
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
        "sampling/createMessage",
        "elicitation/create",
        "roots/list",
    }
)


class BoundedNames:
    """A set of label values that stops growing at ``limit``: later new names map to ``other``.

    Prometheus keeps one time series per label combination, so an unbounded label is a memory
    leak in Veil and in the metrics backend, and a way for anyone who can name things to spam it."""

    def __init__(self, pattern: re.Pattern[str], limit: int) -> None:
        self._pattern = pattern
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, name: str | None) -> str:
        if not name or not self._pattern.match(name):
            return OTHER
        if name in self._seen:
            return name
        with self._lock:
            if len(self._seen) >= self._limit:
                return OTHER
            self._seen.add(name)
        return name


tool_name = BoundedNames(_TOOL, MAX_TOOLS)
entity_type = BoundedNames(_ENTITY, MAX_ENTITY_TYPES)
reason = BoundedNames(_REASON, MAX_REASONS)


def method(name: str) -> str:
    return name if name in METHODS else OTHER


def upstream(name: str | None, configured: Iterable[str]) -> str:
    """The upstream's config name, or empty (Veil's own tools, listings, unknown names)."""
    return name if name and name in configured else ""
