"""Code execution: agent-written Python in a firejail sandbox, calling upstream tools through a
generated Python API over a pipe-based RPC channel.

    manager.py   SandboxManager: sessions, warm pool, limits, outcomes (the gateway's entry point)
    process.py   one running sandbox and its pipes
    firejail.py  the firejail command line: what the code can see and do
    channel.py   strict parsing of messages from the sandbox
    runtime.py   the loop inside the sandbox (stdlib only, sent as source)
    stubs.py     render_stubs(): the ``servers/`` package the code imports
    output.py    fitting stdout/stderr/result into the output budget
    outcome.py   the outcome and the plain-words message for the agent
    user.py      ensure_sandbox_user(); ``python -m veil.sandbox.setup`` (setup.py) runs it
"""

from __future__ import annotations

from veil.sandbox.manager import SandboxManager
from veil.sandbox.spec import ExecutionResult, Outcome, ToolSpec
from veil.sandbox.stubs import render_stubs
from veil.sandbox.user import ensure_sandbox_user

__all__ = ["ExecutionResult", "Outcome", "SandboxManager", "ToolSpec", "ensure_sandbox_user", "render_stubs"]
