"""The interpreter loop that runs *inside* the firejail sandbox.

This file is never imported by Veil: the host reads it as text and sends it over the channel to a
tiny bootstrap (``BOOTSTRAP`` in ``veil.sandbox.process``), which executes it as the module
``_veil_runtime``. It therefore uses the standard library only (the sandbox runs ``python3 -I -S``
with no site-packages) and must stay small.

Why a persistent loop: one firejail start costs tens of milliseconds, an ``exec`` in a warm
interpreter well under one. Variables live in ``NAMESPACE`` between executions of one session.

Channel (newline-delimited JSON, never a socket):

* host -> sandbox on ``CHAN_IN`` (the pipe that was fd 0; fd 0 is /dev/null for the code):
  ``{"type": "exec", "id", "code", "stubs", "clean", "max_repr"}`` and
  ``{"type": "tool_result", "id", "ok", "value" | "error", "kind"}``.
* sandbox -> host on ``CHAN_OUT_FD``: ``{"type": "ready"}``, ``{"type": "call", "id", "upstream",
  "tool", "args"}`` and ``{"type": "done", "id", "status", "error_type", "result", "cpu_s",
  "max_rss_kb"}``.

The code's own output goes to fds 1 and 2, which the host reads separately: nothing it prints can
look like a channel message. The code shares this process and could write to the channel fd
directly; the host treats every message as untrusted and validates it strictly.
"""

import ast
import builtins
import contextlib
import json
import os
import resource
import shutil
import signal
import sys
import threading
import traceback

CHAN_IN = globals()["CHAN_IN"]  # set by the bootstrap
CHAN_OUT_FD = globals()["CHAN_OUT_FD"]
WORKSPACE = os.path.expanduser("~")
STUB_DIR = os.path.join(WORKSPACE, "servers")
SHARED_SKILLS = globals().get("BOOT", {}).get("shared_skills")

NAMESPACE: dict = {}
_call_lock = threading.Lock()
_next_call = [0]


class CPUTimeExceeded(Exception):
    """The execution used its CPU-time budget (SIGXCPU at the soft RLIMIT_CPU)."""


CPUTimeExceeded.__module__ = "builtins"  # tracebacks read "CPUTimeExceeded: ..."


def _on_sigxcpu(signum, frame):
    raise CPUTimeExceeded("CPU time limit reached")


class ToolError(Exception):
    """An upstream tool call failed; ``kind`` names the gateway's error class (e.g. FlowDenied)."""

    def __init__(self, message, kind="ToolError", code=None):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.code = code


ToolError.__module__ = "servers"


def _send(message):
    data = (json.dumps(message, separators=(",", ":"), default=str) + "\n").encode()
    view = memoryview(data)
    while view:
        written = os.write(CHAN_OUT_FD, view)
        view = view[written:]


def _receive():
    line = CHAN_IN.readline()
    if not line:
        os._exit(0)  # the host closed the channel: nothing more to do
    return json.loads(line)


def call_tool(upstream, tool, args):
    """Send one tool call to the host and wait for its answer (one call at a time)."""
    with _call_lock:
        _next_call[0] += 1
        call_id = _next_call[0]
        try:
            json.dumps(args)  # strict: a set or an object is an error here, not silently a string
        except (TypeError, ValueError) as exc:
            raise TypeError(f"arguments to {upstream}.{tool} must be JSON values: {exc}") from None
        _send({"type": "call", "id": call_id, "upstream": upstream, "tool": tool, "args": args})
        reply = _receive()
        if reply.get("type") != "tool_result" or reply.get("id") != call_id:
            raise RuntimeError("the gateway answered out of order; restart with reset=True")
        if reply.get("ok"):
            return reply.get("value")
        raise ToolError(reply.get("error", "tool call failed"), reply.get("kind", "ToolError"), reply.get("code"))


def _install_stubs(stubs):
    """Write the generated ``servers/`` tree into the workspace and forget stale modules."""
    if os.path.islink(STUB_DIR) or os.path.isfile(STUB_DIR):
        os.unlink(STUB_DIR)
    elif os.path.isdir(STUB_DIR):
        shutil.rmtree(STUB_DIR, ignore_errors=True)
    for rel, text in stubs.items():
        path = os.path.join(WORKSPACE, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    for name in list(sys.modules):
        if name == "servers" or name.startswith("servers."):
            del sys.modules[name]
    import importlib

    importlib.invalidate_caches()


def _clean_workspace():
    """reset=True: empty the workspace except skills/ (runs as the sandbox user, inside the jail)."""
    for name in os.listdir(WORKSPACE):
        if name == "skills":
            continue
        path = os.path.join(WORKSPACE, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _install_skills_package():
    """``skills`` is one package spanning the workspace's skills/ and the shared skills dir."""
    import types

    for name in list(sys.modules):
        if name == "skills" or name.startswith("skills."):
            del sys.modules[name]
    package = types.ModuleType("skills", "Saved skills: workspace skills/ first, then the shared skills dir.")
    package.__path__ = [os.path.join(WORKSPACE, "skills")] + ([SHARED_SKILLS] if SHARED_SKILLS else [])
    package.__package__ = "skills"
    sys.modules["skills"] = package


def _help(*args, **kwargs):
    import pydoc

    return pydoc.help(*args, **kwargs)


def _fresh_namespace():
    NAMESPACE.clear()
    NAMESPACE.update({"__name__": "__main__", "__builtins__": builtins})


def _run(code, max_repr):
    """Execute like a notebook cell: the value of a final expression is returned as its repr."""
    import linecache

    linecache.cache["<execute_code>"] = (len(code), None, code.splitlines(True), "<execute_code>")
    tree = ast.parse(code, "<execute_code>", "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, "<execute_code>", "exec"), NAMESPACE)
    if last is None:
        return None
    value = eval(compile(last, "<execute_code>", "eval"), NAMESPACE)
    if value is None:
        return None
    NAMESPACE["_"] = value
    text = repr(value)
    return text if len(text) <= max_repr else text[:max_repr] + "\u2026"


def _print_error(exc):
    """The traceback from the agent's code onwards (the runtime's own frames are noise)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != "<execute_code>":
        tb = tb.tb_next
    try:
        traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
    except Exception:
        print(type(exc).__name__, file=sys.stderr)


def _cpu_budget(seconds):
    """Let this execution use ``seconds`` more CPU time: move the soft RLIMIT_CPU forward (never
    past the hard limit firejail set for the interpreter's life)."""
    if seconds <= 0:
        return
    own = resource.getrusage(resource.RUSAGE_SELF)
    used = int(own.ru_utime + own.ru_stime) + 1
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    limit = used + seconds if hard == resource.RLIM_INFINITY else min(hard, used + seconds)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CPU, (limit, hard))


def _execute(request):
    if request.get("clean"):
        _clean_workspace()
        _fresh_namespace()
    if request.get("stubs") is not None:
        _install_stubs(request["stubs"])
    _cpu_budget(int(request.get("cpu_s", 0)))
    status, error_type, result = "ok", None, None
    try:
        result = _run(request["code"], int(request.get("max_repr", 65536)))
    except CPUTimeExceeded as exc:
        status, error_type = "cpu", "CPUTimeExceeded"
        _print_error(exc)
    except MemoryError as exc:
        status, error_type = "memory", "MemoryError"
        _print_error(exc)
    except BaseException as exc:  # the agent's code may raise anything, SystemExit included
        status, error_type = "error", type(exc).__name__
        _print_error(exc)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    _send({"type": "done", "id": request["id"], "status": status, "error_type": error_type, "result": result})
    # Stop until the host continues us with the next execution: the host ends an execution only
    # once it sees this process stopped (code that forges "done" and runs on is not).
    os.kill(os.getpid(), signal.SIGSTOP)


def main():
    os.chdir(WORKSPACE)
    for dotfile in (".bashrc", ".inputrc"):  # firejail copies these into a private home
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(WORKSPACE, dotfile))
    if WORKSPACE not in sys.path:
        sys.path.insert(0, WORKSPACE)
    builtins.help = _help
    signal.signal(signal.SIGXCPU, _on_sigxcpu)
    sys.modules.setdefault("_veil_runtime", sys.modules.get("_veil_runtime"))
    _fresh_namespace()
    _install_skills_package()
    _send({"type": "ready", "pid": os.getpid()})
    while True:
        request = _receive()
        if request.get("type") != "exec":
            continue
        _install_skills_package()
        _execute(request)


main()
