"""Outcome and message of an execution: what the agent is told, in plain words.

The message never contains the code's output (that travels in stdout/stderr/result, which the
gateway tokenises); it says what happened and what survived (variables, files).
"""

from __future__ import annotations

from veil.config import SandboxConfig
from veil.sandbox.channel import Done
from veil.sandbox.spec import ExecutionResult

_LOST = "Variables are lost; files in the workspace are kept. The next execution starts a fresh interpreter."


def describe(
    result: ExecutionResult,
    done: Done | None,
    ended: str | None,
    timeout: float,
    config: SandboxConfig,
    *,
    threads: int = 0,
    strays: int = 0,
) -> None:
    """Outcome and a plain-words message for the agent (no code output in it). ``threads`` and
    ``strays`` count what the code left running when it finished (the host stopped it)."""
    calls = f"{result.tool_calls} tool call{'s' if result.tool_calls != 1 else ''}"
    if ended == "timeout":
        result.outcome = "timeout"
        result.message = f"The code did not finish within {timeout:g} s and was stopped. {_LOST}"
    elif ended == "flood":
        result.outcome = "output_limit"
        result.message = (
            "The code wrote far more output than can be returned and was stopped. Print summaries, "
            f"or write large data to a file in the workspace. {_LOST}"
        )
    elif ended == "violation":
        result.outcome = "killed"
        result.message = f"The sandbox broke the channel protocol and was stopped. {_LOST}"
    elif ended == "exit":
        result.outcome = "killed"
        result.message = (
            "The sandbox process ended during the execution: the code exited or killed it, or it went "
            f"over the interpreter's CPU-time budget or its memory limit ({config.memory_mb} MB). " + _LOST
        )
    elif done is not None and done.status == "cpu":
        result.outcome = "timeout"
        result.message = (
            f"The code used its CPU-time limit of {config.cpu_s} s and was interrupted "
            "(CPUTimeExceeded, traceback in stderr); the interpreter survived and keeps the variables "
            "defined before."
        )
    elif done is not None and done.status == "memory":
        result.outcome = "memory"
        result.message = (
            f"The code ran out of memory (limit {config.memory_mb} MB) and raised MemoryError; "
            "the interpreter survived and keeps the variables defined before."
        )
    elif done is not None and done.status == "error":
        result.outcome = "error"
        result.message = (
            f"The code raised {done.error_type or 'an exception'} after {calls}; the traceback is in stderr. "
            "Variables defined before the error are kept."
        )
    else:
        result.outcome = "ok"
        result.message = f"The code ran to completion with {calls}."
    if ended is None and strays:
        result.message += (
            f" It left {strays} process{'es' if strays != 1 else ''} running, which {'were' if strays != 1 else 'was'} "
            "stopped: an execution ends with everything it started."
        )
    if ended is None and threads:
        result.message += (
            f" It left {threads} thread{'s' if threads != 1 else ''} running, so the interpreter was stopped with "
            f"{'them' if threads != 1 else 'it'}: {_LOST}"
        )
    if result.truncated:
        result.message += f" Output was cut to {config.max_output_bytes} bytes: print less, or save data to a file."
