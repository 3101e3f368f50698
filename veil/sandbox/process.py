"""One running sandbox: a firejail'd ``python3`` executing ``runtime.py``, and its pipes.

Four pipes, no sockets: the channel in (the jail's fd 0, which the bootstrap moves aside and
replaces by /dev/null), the channel out (an extra fd kept with ``pass_fds``/``--keep-fd``), and the
code's stdout and stderr. The host reads the three outgoing pipes with non-blocking readers on the
event loop, so a flood of output or a hostile channel writer never blocks Veil.

Processes: firejail (outer) -> the jail's init (PID 1 of its PID namespace) -> the interpreter. Once
the runtime is ready, and before any code runs, the three are moved into the sandbox's cgroup,
which every later process inherits. The host learns their pids from /proc, never from the sandbox.

Kill: ``kill()`` SIGKILLs the jail's init (the kernel then kills the PID namespace), every process
in the cgroup, and the process group. Between executions the interpreter is stopped (SIGSTOP),
so nothing the code left behind (a timer, a signal handler) runs outside an execution's wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veil.config import SandboxConfig
from veil.errors import SandboxError
from veil.sandbox import channel, firejail, proctree
from veil.sandbox.cgroup import Layout, SandboxCgroup

RUNTIME_SOURCE = (Path(__file__).parent / "runtime.py").read_text(encoding="utf-8")

# Runs first inside the jail: move the channel off fd 0, read the runtime's source from it, run it
# as the module ``_veil_runtime`` (the generated stubs import ``call_tool`` and ``ToolError`` from it).
BOOTSTRAP = (
    "import os,sys,json,types\n"
    "i=os.fdopen(os.dup(0),'rb');n=os.open('/dev/null',os.O_RDONLY);os.dup2(n,0);os.close(n)\n"
    "m=json.loads(i.readline());r=types.ModuleType('_veil_runtime');sys.modules['_veil_runtime']=r\n"
    "r.__dict__.update(CHAN_IN=i,CHAN_OUT_FD=m['out_fd'],BOOT=m)\n"
    "exec(compile(m['source'],'<veil-runtime>','exec'),r.__dict__)\n"
)

START_TIMEOUT_S = 15.0


class StreamBuffer:
    """Keeps the first ``cap`` bytes of a stream and counts the rest."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.cap + 1 - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    def take(self) -> tuple[bytes, int]:
        data, total = bytes(self.data), self.total
        self.data, self.total = bytearray(), 0
        return data, total


@dataclass
class Exit:
    """The channel closed: the sandbox ended (killed, crashed or exited)."""

    returncode: int | None = None


@dataclass
class Flood:
    """The code wrote more output than the hard limit allows."""


@dataclass
class Violation:
    reason: str


@dataclass
class SandboxProcess:
    """Start with ``await SandboxProcess.start(...)``; then ``send``/``next_message``/``kill``."""

    config: SandboxConfig
    workspace: Path
    proc: subprocess.Popen[bytes]
    chan_in: int
    chan_out: int
    out_fd: int
    err_fd: int
    stdout: StreamBuffer
    stderr: StreamBuffer
    flood_limit: int
    started_at: float = field(default_factory=time.monotonic)
    messages: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    stubs_digest: str | None = None
    pid: int | None = None
    alive: bool = True
    cgroup: SandboxCgroup | None = None
    jail_pids: tuple[int, int, int] | None = None  # host pids: firejail, the jail's init, the interpreter
    frozen: bool = False
    cpu_mark: float = 0.0
    watch: proctree.Watch | None = None  # the interpreter's /proc files
    _line: bytearray = field(default_factory=bytearray)
    _closed_fds: set[int] = field(default_factory=set)
    _flooded: bool = False

    @classmethod
    async def start(
        cls,
        config: SandboxConfig,
        paths: firejail.JailPaths,
        *,
        run_as: tuple[int, int] | None,
        cgroups: Layout | None = None,
    ) -> SandboxProcess:
        """Spawn the jail, wait for the runtime's ``ready`` and confine it in its own cgroup (when
        ``cgroups`` is given) before any code runs; SandboxError if any of it fails."""
        in_r, in_w = os.pipe()
        cout_r, cout_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        argv = firejail.command(config, paths, cout_w, BOOTSTRAP)
        kwargs: dict[str, Any] = {}
        if run_as is not None:
            kwargs.update(user=run_as[0], group=run_as[1], extra_groups=[])
        try:
            proc = subprocess.Popen(
                argv,
                stdin=in_r,
                stdout=out_w,
                stderr=err_w,
                pass_fds=(cout_w,),
                env=firejail.environment(),
                cwd="/",
                start_new_session=True,
                **kwargs,
            )
        except OSError as exc:
            for fd in (in_r, in_w, cout_r, cout_w, out_r, out_w, err_r, err_w):
                os.close(fd)
            raise SandboxError(
                f"cannot start firejail as the sandbox user ({exc.strerror}). Veil must run as root, and "
                f"firejail must be installed ({firejail.FIX})."
            ) from None
        for fd in (in_r, cout_w, out_w, err_w):
            os.close(fd)
        for fd in (in_w, cout_r, out_r, err_r):
            os.set_blocking(fd, False)
        cap = config.max_output_bytes
        sandbox = cls(
            config=config,
            workspace=paths.workspace,
            proc=proc,
            chan_in=in_w,
            chan_out=cout_r,
            out_fd=out_r,
            err_fd=err_r,
            stdout=StreamBuffer(cap),
            stderr=StreamBuffer(cap),
            flood_limit=max(64 * cap, 4 * 1024 * 1024),
        )
        sandbox._watch()
        shared = None if paths.shared_skills is None else str(paths.shared_skills.resolve())
        boot = {"source": RUNTIME_SOURCE, "out_fd": cout_w, "shared_skills": shared}
        try:
            await sandbox.send(boot)
            message = await asyncio.wait_for(sandbox.messages.get(), START_TIMEOUT_S)
        except (TimeoutError, OSError):
            message = None
        except BaseException:  # cancelled (e.g. the manager closing): never leave a jail behind
            sandbox.kill()
            raise
        if not isinstance(message, channel.Ready):
            detail = sandbox.stderr.take()[0].decode(errors="replace").strip().splitlines()
            sandbox.kill()
            errors = [line for line in detail if line.startswith("Error")] or detail[-1:]
            hint = f" firejail said: {errors[0][:300]}" if errors else ""
            raise SandboxError(
                "the sandbox did not start." + hint + f" Check that firejail works ({firejail.FIX}) and that "
                "the sandbox user exists (python -m veil.sandbox.setup)."
            )
        sandbox.pid = message.pid
        try:
            sandbox._confine(cgroups)
        except BaseException:
            sandbox.kill()
            await sandbox.wait(2.0)
            raise
        return sandbox

    def _confine(self, cgroups: Layout | None) -> None:
        """Find the jail's processes by host pid and move them into a fresh cgroup."""
        inits = proctree.children(self.proc.pid)
        workers = proctree.children(inits[0]) if len(inits) == 1 else []
        if len(workers) != 1:
            raise SandboxError(
                "the sandbox did not start as expected (firejail's process tree is not jail -> init -> python)"
            )
        self.jail_pids = (self.proc.pid, inits[0], workers[0])
        self.watch = proctree.Watch(workers[0])
        self.cpu_mark = self.watch.cpu_seconds()
        if cgroups is None:
            return
        mib = 1024 * 1024
        self.cgroup = SandboxCgroup.create(
            cgroups, max_tasks=self.config.max_processes, memory_bytes=self.config.memory_mb * mib
        )
        for pid in self.jail_pids:
            self.cgroup.add(pid)

    # -- reading ---------------------------------------------------------------------------

    def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.chan_out, self._on_channel)
        loop.add_reader(self.out_fd, self._on_output, self.out_fd, self.stdout)
        loop.add_reader(self.err_fd, self._on_output, self.err_fd, self.stderr)

    def _read(self, fd: int) -> bytes | None:
        """Non-blocking read; b"" means EOF, None means nothing right now."""
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def _close_reader(self, fd: int) -> None:
        if fd in self._closed_fds:
            return
        self._closed_fds.add(fd)
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(fd)
        with contextlib.suppress(OSError):
            os.close(fd)

    def _on_output(self, fd: int, buffer: StreamBuffer) -> None:
        while True:
            chunk = self._read(fd)
            if chunk is None:
                return
            if not chunk:
                self._close_reader(fd)
                return
            buffer.add(chunk)
            if self.stdout.total + self.stderr.total > self.flood_limit and not self._flooded:
                self._flooded = True
                self.messages.put_nowait(Flood())

    def drain_channel(self) -> None:
        """Parse whatever the sandbox has written to the channel so far (the reader callback may
        not have run yet)."""
        if self.chan_out not in self._closed_fds:
            self._on_channel()

    def drain_output(self) -> None:
        """Read whatever the code wrote before its ``done`` message (pipes keep write order)."""
        for fd, buffer in ((self.out_fd, self.stdout), (self.err_fd, self.stderr)):
            if fd not in self._closed_fds:
                self._on_output(fd, buffer)

    def _on_channel(self) -> None:
        while True:
            chunk = self._read(self.chan_out)
            if chunk is None:
                return
            if not chunk:
                self._close_reader(self.chan_out)
                self.alive = False
                self.messages.put_nowait(Exit(self.proc.poll()))
                return
            self._line += chunk
            while True:
                end = self._line.find(b"\n")
                if end < 0:
                    if len(self._line) > channel.MAX_MESSAGE_BYTES:
                        self._line.clear()
                        self.messages.put_nowait(Violation("message larger than the channel limit"))
                    break
                line = bytes(self._line[:end])
                del self._line[: end + 1]
                try:
                    self.messages.put_nowait(channel.parse(line, self.config.max_output_bytes))
                except channel.ProtocolViolation as exc:
                    self.messages.put_nowait(Violation(str(exc)))

    # -- writing ---------------------------------------------------------------------------

    async def send(self, message: dict[str, object]) -> int:
        """Write one message to the sandbox without blocking the loop; returns its size."""
        data = memoryview(channel.encode(message))
        size = len(data)
        loop = asyncio.get_running_loop()
        while data:
            try:
                written = os.write(self.chan_in, data)
                data = data[written:]
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_writer(self.chan_in, ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_writer(self.chan_in)
        return size

    # -- ending ----------------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL the jail's init (firejail's child, PID 1 of the sandbox's PID namespace: the
        kernel then kills every process in the namespace) and release the pipes. The outer
        firejail reaps it and exits; ``wait`` kills the whole process group if it does not.
        Idempotent."""
        self.alive = False
        for pid in proctree.children(self.proc.pid) + (self.cgroup.procs() if self.cgroup else []):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None and not proctree.children(self.proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        for fd in (self.chan_out, self.out_fd, self.err_fd):
            self._close_reader(fd)
        if self.chan_in not in self._closed_fds:
            self._closed_fds.add(self.chan_in)
            with contextlib.suppress(OSError):
                os.close(self.chan_in)
        if self.watch is not None:
            self.watch.close()

    async def wait(self, timeout: float = 5.0) -> int | None:
        """Reap the firejail process (in a thread: Popen.wait blocks); SIGKILL its process group
        if it has not gone within ``timeout``. Then remove the cgroup once it is empty."""
        try:
            code = await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            try:
                code = await asyncio.to_thread(self.proc.wait, timeout)
            except subprocess.TimeoutExpired:
                code = None
        if self.cgroup is not None:
            for _ in range(200):  # the kernel empties a group a moment after its last process exits
                if self.cgroup.remove():
                    break
                self.kill()
                await asyncio.sleep(0.01)
        return code

    # -- the host decides when an execution has ended ---------------------------------------

    @property
    def worker(self) -> int:
        assert self.jail_pids is not None
        return self.jail_pids[2]

    @property
    def interpreter(self) -> proctree.Watch:
        assert self.watch is not None
        return self.watch

    def extra_threads(self) -> int:
        return max(0, self.interpreter.threads() - 1)

    def strays(self) -> list[int]:
        """Live processes of the sandbox other than firejail's two and the interpreter."""
        assert self.jail_pids is not None
        if self.cgroup is not None:
            found = self.cgroup.procs()
        else:
            found, todo = [], proctree.children(self.jail_pids[1])
            while todo:
                pid = todo.pop()
                found.append(pid)
                todo += proctree.children(pid)
        return [p for p in found if p not in self.jail_pids and proctree.alive(p)]  # common case: none

    def kill_strays(self) -> int:
        """SIGKILL every stray once; returns how many there were."""
        strays = self.strays()
        for pid in strays:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return len(strays)

    def freeze(self) -> None:
        """Stop the interpreter until the next execution (timers and handlers cannot run meanwhile)."""
        self.frozen = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.worker, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.frozen:
            self.frozen = False
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.worker, signal.SIGCONT)

    def usage(self) -> tuple[float, float]:
        """(CPU seconds of the interpreter since the last call, peak memory MiB: the interpreter's
        peak resident set or the sandbox cgroup's peak, whichever is larger), measured by the host."""
        now = self.interpreter.cpu_seconds()
        cpu, self.cpu_mark = max(0.0, now - self.cpu_mark), now
        peak = max(self.interpreter.peak_rss_bytes(), self.cgroup.peak_memory_bytes() if self.cgroup else 0)
        return round(cpu, 4), round(peak / (1024 * 1024), 1)
