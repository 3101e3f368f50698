"""The agent's message says what happened and what survived, never what the code printed."""

from __future__ import annotations

import pytest

from veil.config import SandboxConfig
from veil.sandbox.channel import Done
from veil.sandbox.outcome import describe
from veil.sandbox.spec import ExecutionResult


@pytest.mark.parametrize(
    ("done", "ended", "outcome", "words"),
    [
        (Done(1, "ok", None, "'x'"), None, "ok", "ran to completion with 2 tool calls"),
        (Done(1, "error", "KeyError", None), None, "error", "raised KeyError after 2 tool calls"),
        (Done(1, "memory", "MemoryError", None), None, "memory", "limit 256 MB"),
        (Done(1, "cpu", "CPUTimeExceeded", None), None, "timeout", "CPU-time limit of 3 s"),
        (None, "timeout", "timeout", "within 1.5 s"),
        (None, "flood", "output_limit", "far more output"),
        (None, "violation", "killed", "channel protocol"),
        (None, "exit", "killed", "ended during the execution"),
    ],
)
def test_messages(done, ended, outcome, words):
    result = ExecutionResult(stdout="[EMAIL_ADDRESS_1] printed", tool_calls=2)
    describe(result, done, ended, 1.5, SandboxConfig(memory_mb=256, cpu_s=3))
    assert result.outcome == outcome
    assert words in result.message
    assert "EMAIL" not in result.message


def test_truncation_is_mentioned():
    result = ExecutionResult(truncated=True)
    describe(result, Done(1, "ok", None, None), None, 1.0, SandboxConfig(max_output_bytes=1000))
    assert "Output was cut to 1000 bytes" in result.message


def test_what_the_code_left_running_is_reported():
    result = ExecutionResult(tool_calls=1)
    describe(result, Done(1, "ok", None, None), None, 1.0, SandboxConfig(), threads=2, strays=3)
    assert result.outcome == "ok"
    assert "left 3 processes running, which were stopped" in result.message
    assert "left 2 threads running, so the interpreter was stopped" in result.message
    assert "Variables are lost" in result.message
