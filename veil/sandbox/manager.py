"""SandboxManager: sessions, their persistent interpreters, the warm pool and the limits.

One session = one workspace (its own size-limited filesystem; files persist) + at most one live
sandboxed interpreter (variables persist). An execution takes the session's interpreter, or a
pre-started one from the warm pool (with its fresh workspace), or starts one cold. Whatever ends an
interpreter abnormally (timeout, memory, output flood, crash, protocol violation) kills every
process of its sandbox; the next execution starts a fresh one and the agent is told in plain words.

The host, not the code, decides when an execution has ended (``ending.py``): the runtime's ``done``
is a claim, accepted once the interpreter is seen stopped (the runtime stops itself after it, and
only the host continues it, with the next execution); every other process the execution started
is then stopped and killed, and an interpreter with threads left running is replaced. The wall
clock covers all of it.

Concurrency: one execution at a time per session (a lock), and at most ``2 x cores`` executions
across sessions (a semaphore), so a burst of requests queues instead of overwhelming the machine.

Nothing here logs code output: stdout, stderr and results are returned to the gateway, which
passes them through the tokenizer before anything else sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pwd
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veil.config import SandboxConfig
from veil.errors import SandboxError, VeilError
from veil.sandbox import ending, firejail, reclaim, workspace
from veil.sandbox.cgroup import Layout
from veil.sandbox.channel import Call, Done
from veil.sandbox.outcome import describe
from veil.sandbox.output import cap_output
from veil.sandbox.process import Exit, Flood, SandboxProcess
from veil.sandbox.spec import ExecutionResult, ToolSpec
from veil.sandbox.stubs import render_stubs, stubs_digest
from veil.sandbox.user import ensure_sandbox_user

CallTool = Callable[[str, str, dict[str, Any]], Awaitable[Any]]
# Limits fixed when a jail starts; an interpreter started under other values is replaced.
JAIL_FIELDS = ("memory_mb", "cpu_s", "max_processes", "max_file_mb", "max_open_files", "user", "shared_skills_dir")


@dataclass
class _Session:
    id: str
    workspace: Path
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sandbox: SandboxProcess | None = None
    idle: asyncio.TimerHandle | None = None


class SandboxManager:
    """Runs agent code in firejail sandboxes; see docs/sandbox.md."""

    def __init__(self, config: SandboxConfig, workspace_root: Path) -> None:
        self.config = config
        self.workspace_root = Path(workspace_root)
        self._sessions: dict[str, _Session] = {}
        self._pool: list[SandboxProcess] = []
        self._refilling: asyncio.Task[None] | None = None
        # At most 2 x cores executions run at once; the rest queue (created here so that a burst
        # of first calls shares one semaphore).
        self._slots = asyncio.Semaphore(max(2, 2 * (os.cpu_count() or 1)))
        self._init_lock = asyncio.Lock()
        self._reapers: set[asyncio.Task[Any]] = set()  # killed sandboxes being reaped
        self._run_as: tuple[int, int] | None = None
        self._ready = False
        self._closed = False
        self._exec_ids = 0
        self._stub_cache: tuple[int, str, dict[str, str]] | None = None
        self._cgroups: Layout | None = None
        self._root_lock: int | None = None  # shared flock on the workspace root while open

    def reconfigure(self, config: SandboxConfig) -> None:
        """New limits (a reloaded policy): per-execution ones apply from the next execution;
        interpreters and pooled sandboxes started under other jail limits are replaced when next
        used. A new ``workspace_mb`` applies to workspaces created from now on. Safe to call from
        another thread (one reference assignment)."""
        self.config = config

    def _stale(self, sandbox: SandboxProcess) -> bool:
        return any(getattr(sandbox.config, f) != getattr(self.config, f) for f in JAIL_FIELDS)

    # -- public interface -------------------------------------------------------------------

    async def start(self) -> None:
        """Check the host (firejail, sandbox user) and warm the pool; ``execute`` does it lazily."""
        if self._closed:
            raise SandboxError("the sandbox manager is closed")
        if not self._ready:
            async with self._init_lock:
                if not self._ready:
                    await self._check_host()
        self._refill_soon()

    async def _check_host(self) -> None:
        """firejail, python, root, the sandbox user and a reachable workspace root, or SandboxError."""
        firejail.find_firejail()
        firejail.find_python()
        if os.geteuid() != 0:
            raise SandboxError(
                "execute_code needs Veil to run as root so that sandboxes start as the unprivileged "
                f"user '{self.config.user}' (firejail refuses --noroot otherwise). Start veil as root, "
                f"after running once: python -m veil.sandbox.setup --user {self.config.user}"
            )
        entry = await asyncio.to_thread(ensure_sandbox_user, self.config.user)
        self._run_as = (entry.pw_uid, entry.pw_gid)
        if Path("/var") in self.workspace_root.resolve().parents:
            raise SandboxError(
                f"the workspace root {self.workspace_root} is under /var, where firejail cannot mount a "
                "private home. Use a directory elsewhere (e.g. DATA_DIR/workspaces or /srv/veil)."
            )
        self.workspace_root.mkdir(parents=True, exist_ok=True)
        os.chown(self.workspace_root, 0, 0)
        os.chmod(self.workspace_root, 0o711)  # the sandbox user may enter its own dir, not list
        if self._root_lock is None:  # what a Veil that died left here is reclaimed first (reclaim.py)
            self._root_lock = await asyncio.to_thread(reclaim.claim_root, self.workspace_root)
        if self._cgroups is None:
            await asyncio.to_thread(reclaim.reclaim_cgroups)
            self._cgroups = await asyncio.to_thread(Layout.detect)
        shared = self.config.shared_skills_dir
        private = {Path("/tmp"), Path("/var/tmp")}
        if shared is not None and (not shared.is_dir() or private & set(shared.resolve().parents)):
            raise SandboxError(
                f"sandbox.shared_skills_dir {shared} must be an existing directory outside /tmp and /var/tmp "
                "(the sandbox has private ones). Fix sandbox.shared_skills_dir in the config."
            )
        for parent in self.workspace_root.resolve().parents:
            if not parent.stat().st_mode & 0o001:
                raise SandboxError(
                    f"the sandbox user cannot reach the workspace root {self.workspace_root}: {parent} "
                    "is not searchable by others. Put the workspaces elsewhere or chmod o+x that directory."
                )
        self._ready = True

    async def execute(
        self,
        session_id: str,
        code: str,
        *,
        catalogue: list[ToolSpec],
        call_tool: CallTool,
        timeout_s: float | None = None,
        reset: bool = False,
    ) -> ExecutionResult:
        """Run ``code`` in the session's interpreter; never raises for what the code does."""
        if not isinstance(session_id, str) or not session_id:
            raise SandboxError("execute needs a non-empty session id")
        await self.start()
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = _Session(session_id, self._workspace_for(session_id))
        timeout = self.config.timeout_s if timeout_s is None else min(timeout_s, self.config.timeout_s)
        async with session.lock, self._slots:
            if session.idle is not None:
                session.idle.cancel()
            started = time.monotonic()
            restarted = False
            if session.sandbox is not None and (reset or self._stale(session.sandbox)):
                self._discard(session)
            if session.sandbox is None or not session.sandbox.alive:
                self._discard(session)
                session.sandbox = await self._acquire(session)
                restarted = True
            result = await self._run(session, code, catalogue, call_tool, timeout, clean=reset)
            result.restarted = restarted
            result.duration_ms = round((time.monotonic() - started) * 1000, 3)
            if session.sandbox is not None and self.config.idle_timeout_s > 0:
                loop = asyncio.get_running_loop()
                session.idle = loop.call_later(self.config.idle_timeout_s, self._on_idle, session)
            return result

    async def close_session(self, session_id: str) -> None:
        """End the session: stop its interpreter and delete its workspace."""
        session = self._sessions.pop(session_id, None)
        session_workspace = session.workspace if session else self._workspace_for(session_id)
        if session is not None:
            async with session.lock:
                if session.idle is not None:
                    session.idle.cancel()
                self._discard(session)
        await asyncio.to_thread(workspace.remove, session_workspace)

    def interrupt(self) -> int:
        """Shutdown: kill the sandboxes of the executions running now, so each ends at once as
        ``killed`` and returns to its caller instead of holding its session until the wall clock.
        Returns how many were running."""
        running = [s for s in self._sessions.values() if s.lock.locked() and s.sandbox is not None]
        for session in running:
            assert session.sandbox is not None
            session.sandbox.kill()
            session.sandbox.messages.put_nowait(Exit(None))  # the pipes are closed: tell the execution
        return len(running)

    async def aclose(self) -> None:
        """Stop every interpreter and the pool; workspaces of open sessions are removed too."""
        self._closed = True
        if self._refilling is not None:  # not cancelled: a workspace being mounted in a thread must be removed
            with contextlib.suppress(Exception):
                await self._refilling
        for session_id in list(self._sessions):
            await self.close_session(session_id)
        for sandbox in self._pool:
            sandbox.kill()
            await sandbox.wait(2.0)
            await asyncio.to_thread(workspace.remove, sandbox.workspace)
        self._pool.clear()
        await self.settle()
        if self._cgroups is not None:
            await asyncio.to_thread(self._cgroups.remove)
        if self._root_lock is not None:
            os.close(self._root_lock)
            self._root_lock = None

    async def settle(self) -> None:
        """Wait until every stopped sandbox has exited (benchmarks, tests, shutdown)."""
        while self._reapers:
            await asyncio.gather(*list(self._reapers), return_exceptions=True)

    def live_sessions(self) -> list[str]:
        """Sessions whose interpreter is running (for tests and status)."""
        return [s.id for s in self._sessions.values() if s.sandbox is not None and s.sandbox.alive]

    @property
    def pool_ready(self) -> int:
        return len(self._pool)

    async def wait_pool(self) -> None:
        """Wait until the warm pool is full (benchmarks and tests; bounded by the start timeout)."""
        await self.start()
        while self._refilling is not None and not self._refilling.done():
            await asyncio.shield(self._refilling)

    # -- interpreters -----------------------------------------------------------------------

    def _workspace_for(self, session_id: str) -> Path:
        digest = hashlib.sha256(session_id.encode()).hexdigest()[:32]
        return self.workspace_root / f"s-{digest}"

    def _make_workspace(self, path: Path) -> None:
        assert self._run_as is not None
        workspace.create(path, quota_mb=self.config.workspace_mb, owner=self._run_as)

    def _paths(self, workspace: Path) -> firejail.JailPaths:
        assert self._run_as is not None
        home = Path(pwd.getpwuid(self._run_as[0]).pw_dir)
        return firejail.JailPaths(workspace, self.workspace_root, home, self.config.shared_skills_dir)

    async def _spawn(self, workspace: Path) -> SandboxProcess:
        return await SandboxProcess.start(
            self.config, self._paths(workspace), run_as=self._run_as, cgroups=self._cgroups
        )

    async def _acquire(self, session: _Session) -> SandboxProcess:
        """A pooled interpreter (with its fresh workspace, which becomes the session's) for a session
        without a workspace, otherwise a cold start on the session's workspace."""
        if not session.workspace.exists():
            while self._pool:
                sandbox = self._pool.pop()
                self._refill_soon()
                if not sandbox.alive or self._stale(sandbox):
                    self._retire(sandbox)
                    continue
                session.workspace = sandbox.workspace  # a mount point: it keeps its pool name
                return sandbox
            await asyncio.to_thread(self._make_workspace, session.workspace)
        return await self._spawn(session.workspace)

    def _discard(self, session: _Session) -> None:
        if session.sandbox is not None:
            sandbox, session.sandbox = session.sandbox, None
            sandbox.kill()
            reaper = asyncio.get_running_loop().create_task(sandbox.wait(5.0))
            self._reapers.add(reaper)
            reaper.add_done_callback(self._reapers.discard)

    def _retire(self, sandbox: SandboxProcess) -> None:
        """Stop an unused pooled sandbox and delete its workspace."""
        sandbox.kill()

        async def reap() -> None:
            await sandbox.wait(5.0)
            await asyncio.to_thread(workspace.remove, sandbox.workspace)

        reaper = asyncio.get_running_loop().create_task(reap())
        self._reapers.add(reaper)
        reaper.add_done_callback(self._reapers.discard)

    def _on_idle(self, session: _Session) -> None:
        if session.lock.locked():
            return  # an execution is running; it schedules a new timer when it ends
        session.idle = None
        self._discard(session)

    def _refill_soon(self) -> None:
        if self._closed or (self._refilling is not None and not self._refilling.done()):
            return
        if len(self._pool) < self.config.pool_size:
            self._refilling = asyncio.get_running_loop().create_task(self._refill())

    async def _refill(self) -> None:
        while not self._closed and len(self._pool) < self.config.pool_size:
            path = self.workspace_root / f"pool-{secrets.token_hex(8)}"
            try:
                await asyncio.to_thread(self._make_workspace, path)
                if self._closed:
                    raise SandboxError("closed")
                sandbox = await self._spawn(path)
            except SandboxError:
                await asyncio.to_thread(workspace.remove, path)
                return  # the next execute reports the error by starting cold
            if self._closed:
                self._retire(sandbox)
                return
            self._pool.append(sandbox)

    # -- one execution ----------------------------------------------------------------------

    def _stubs(self, catalogue: list[ToolSpec]) -> tuple[str, dict[str, str]]:
        key = hash(
            tuple((s.upstream, s.name, s.description, repr(s.input_schema), repr(s.output_schema)) for s in catalogue)
        )
        if self._stub_cache is None or self._stub_cache[0] != key:
            files = render_stubs(catalogue)
            self._stub_cache = (key, stubs_digest(files), files)
        return self._stub_cache[1], self._stub_cache[2]

    async def _run(
        self,
        session: _Session,
        code: str,
        catalogue: list[ToolSpec],
        call_tool: CallTool,
        timeout: float,
        *,
        clean: bool,
    ) -> ExecutionResult:
        sandbox = session.sandbox
        assert sandbox is not None
        cap = self.config.max_output_bytes
        result = ExecutionResult(code_sha256=hashlib.sha256(code.encode()).hexdigest())
        known = {(spec.upstream, spec.name) for spec in catalogue}
        digest, files = self._stubs(catalogue)
        sandbox.drain_output()
        sandbox.stdout.take(), sandbox.stderr.take()  # drop what background processes wrote before
        self._exec_ids += 1
        exec_id = self._exec_ids
        request = {
            "type": "exec",
            "id": exec_id,
            "code": code,
            "stubs": files if sandbox.stubs_digest != digest else None,
            "clean": clean,
            "max_repr": cap,
            "cpu_s": self.config.cpu_s,
        }
        done: Done | None = None
        ended: str | None = None  # why the interpreter had to go
        threads = strays = 0
        try:
            async with asyncio.timeout(timeout):
                await sandbox.send(request)
                sandbox.thaw()  # after the message is in the pipe: the interpreter wakes once, to read it
                sandbox.stubs_digest = digest
                while done is None and ended is None:
                    message = await sandbox.messages.get()
                    if isinstance(message, Done) and message.id == exec_id:
                        done = message
                    elif isinstance(message, Call):
                        result.tool_calls += 1
                        reply = await self._tool_call(message, known, call_tool)
                        size = await sandbox.send(reply)
                        if reply["ok"]:
                            result.bytes_returned += size
                    elif isinstance(message, Exit):
                        ended = "exit"
                    elif isinstance(message, Flood):
                        ended = "flood"
                    else:  # Violation, a stray Ready or a Done for another id
                        ended = "violation"
                if done is not None:
                    ended, threads, strays = await ending.settle(sandbox)
        except TimeoutError:
            ended = "timeout"
        except OSError:
            ended = "exit"  # the channel broke while writing: the sandbox is gone
        sandbox.drain_output()
        out, out_total = sandbox.stdout.take()
        err, err_total = sandbox.stderr.take()
        result.cpu_s, result.max_rss_mb = sandbox.usage()
        # Stopped (by settle) until the next execution, or killed: nothing of it runs after the call.
        if ended is not None or threads:
            sandbox.kill()
            session.sandbox = None
            await sandbox.wait(5.0)
        if ended is not None:
            done = None  # a claim the host did not accept (e.g. a forged done): its result is not used
        text = cap_output(out, out_total, err, err_total, done.result if done else None, cap)
        result.stdout, result.stderr, result.result, result.truncated = text
        describe(result, done, ended, timeout, self.config, threads=threads, strays=strays)
        return result

    async def _tool_call(self, call: Call, known: set[tuple[str, str]], call_tool: CallTool) -> dict[str, Any]:
        """Forward one call through the gateway pipeline; errors go back to the code as ToolError."""
        base: dict[str, Any] = {"type": "tool_result", "id": call.id}
        if (call.upstream, call.tool) not in known:
            return {
                **base,
                "ok": False,
                "kind": "ToolNotFound",
                "error": f"no tool '{call.tool}' on upstream '{call.upstream}'; see servers/INDEX.md",
            }
        try:
            value = await call_tool(call.upstream, call.tool, call.args)
        except VeilError as exc:  # already tokenised by the gateway
            return {**base, "ok": False, "kind": type(exc).__name__, "error": exc.message, "code": exc.code}
        except Exception as exc:  # unexpected: the text may hold raw values, so only the type is passed
            return {
                **base,
                "ok": False,
                "kind": "UpstreamError",
                "error": f"the gateway could not complete {call.upstream}.{call.tool} ({type(exc).__name__})",
            }
        return {**base, "ok": True, "value": value}
