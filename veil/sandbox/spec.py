"""The typed values the sandbox exchanges with the gateway: what a tool looks like, what an
execution produced.

They live apart from the manager so the gateway (and ``render_stubs``) can use them without
importing anything that starts processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["ok", "error", "timeout", "memory", "killed", "output_limit"]


@dataclass(frozen=True)
class ToolSpec:
    """One upstream tool as the sandbox's generated Python API sees it.

    ``input_schema`` is the tool's JSON Schema for its arguments (an object schema);
    ``output_schema`` its structured-result schema when the upstream declares one.
    """

    upstream: str
    name: str
    description: str = ""
    input_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    output_schema: dict[str, Any] | None = None


@dataclass
class ExecutionResult:
    """What one ``execute`` produced; every text field must still pass the tokenizer.

    ``result`` is the repr of the code's final expression (like a notebook cell) or None.
    ``message`` says in plain words what happened, for the agent. The remaining fields are the
    audit record: how long, how much CPU (this execution) and memory (the interpreter's peak
    resident set so far), how many tool calls and how many bytes of results came back.
    """

    stdout: str = ""
    stderr: str = ""
    result: str | None = None
    outcome: Outcome = "ok"
    message: str = ""
    duration_ms: float = 0.0
    cpu_s: float = 0.0
    max_rss_mb: float = 0.0
    tool_calls: int = 0
    bytes_returned: int = 0
    truncated: bool = False
    code_sha256: str = ""
    restarted: bool = False  # the session's interpreter was (re)started for this execution
