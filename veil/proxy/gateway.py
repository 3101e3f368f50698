"""The gateway: assembles the stages (database, vault, tokenizer, policy, audit, sandbox) once per
process and owns the sessions. The front servers (stdio, HTTP) only translate MCP to calls here.

Start-up order matters and is written down here only:
  database URL (embedded server if none) ▸ migrations ▸ engine ▸ master key ▸ policy ▸ tokenizer
  ▸ audit writer ▸ survey of the upstreams (name collisions, instructions) ▸ sandbox manager
  ▸ ``policy.load`` audit event.
Any failure stops start-up with a message naming what to fix; nothing runs half-configured.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup

from veil import db
from veil.audit import events as ev
from veil.audit.checkpoints import checkpoint_file, load_signing_key
from veil.audit.writer import AuditWriter
from veil.config import SandboxConfig, VeilConfig
from veil.errors import ConfigError
from veil.policies import PolicyStore
from veil.principal import Principal
from veil.proxy.pipeline import Pipeline
from veil.proxy.runner import Runner
from veil.proxy.session import AgentSession
from veil.proxy.survey import survey
from veil.proxy.upstream_http import UpstreamHttp
from veil.tokenizer import Tokenizer, WouldBlock, nerpool
from veil.tokenizer.keyring import Keyring
from veil.tokenizer.nlp import settle_heap

log = logging.getLogger(__name__)
T = TypeVar("T")


class Gateway:
    def __init__(self, config: VeilConfig) -> None:
        self.config = config
        self.pipeline = Pipeline(self)
        self.runner = Runner(self)
        self.sessions: dict[str, AgentSession] = {}
        self._stack = AsyncExitStack()
        # Tokenisation is CPU-bound (spaCy) and runs in threads; two workers per core is plenty.
        self._limiter = anyio.CapacityLimiter(4)
        self.task_group: TaskGroup
        self.sandbox: Any = None
        self.upstream_http = UpstreamHttp()  # clients for HTTP upstreams: one TLS context

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Gateway:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.database_url = await anyio.to_thread.run_sync(db.resolve_url, cfg.database_url, cfg.data_dir)
        await anyio.to_thread.run_sync(db.prepare_schema, self.database_url, cfg.migration_database_url)
        self.engine = await anyio.to_thread.run_sync(db.create_engine, self.database_url)
        self._stack.callback(self.engine.dispose)

        self.keyring = Keyring.load(cfg.data_dir, cfg.key_file)
        self.policies = PolicyStore(cfg.policy, on_change=self._policy_changed, on_rejected=self._policy_rejected)
        policy = self.policies.current
        # NER in worker processes, so one session's large result never stalls another. They load
        # their models while this process loads its own; Veil serves once its own detector is
        # ready, and a call that needs a worker before one is ready waits for it (nerpool).
        await anyio.to_thread.run_sync(nerpool.start, policy.detection.spacy_model, cfg.limits.ner_workers)
        self._stack.callback(nerpool.stop)
        self.tokenizer = await anyio.to_thread.run_sync(
            Tokenizer, self.engine, self.keyring, policy.detection, policy.tokens
        )
        await anyio.to_thread.run_sync(settle_heap)  # the models stay: collections skip them

        self.audit = AuditWriter(
            self.engine,
            batch_max_events=cfg.audit.batch_max_events,
            batch_max_delay_ms=cfg.audit.batch_max_delay_ms,
            signing_key=load_signing_key(cfg.data_dir),
            checkpoint_every_events=cfg.audit.checkpoint_every_events,
            checkpoint_every_s=cfg.audit.checkpoint_every_s,
            checkpoint_file=checkpoint_file(cfg.data_dir, cfg.audit.checkpoint_file),
        )
        # Bound to this loop: record() here makes no thread hop; other threads hand events to it.
        await self.audit.start_async()
        self._stack.push_async_callback(self.audit.aclose)

        self.task_group = await self._stack.enter_async_context(anyio.create_task_group())
        self._stack.push_async_callback(self._close_sessions)
        self._stack.callback(self.task_group.cancel_scope.cancel)
        self.instructions = await survey(self)  # upstream names checked, instructions for agents

        self.sandbox = self._make_sandbox()
        if self.sandbox is not None:
            self._stack.push_async_callback(self.sandbox.aclose)

        await self.record(
            ev.AuditEvent(
                kind=ev.POLICY_LOAD,
                principal="veil",
                policy_version=policy.version,
                detail={"path": str(policy.path), "reason": "start"},
            )
        )
        self.policies.start()
        self._stack.callback(self.policies.stop)

    def _make_sandbox(self) -> Any:
        """The sandbox manager, or None when code mode is off (``expose: direct``)."""
        if self.config.expose == "direct":
            return None
        from veil.sandbox import SandboxManager

        return SandboxManager(self.sandbox_config(), self.config.data_dir / "workspaces")

    def sandbox_config(self) -> SandboxConfig:
        """Config limits, tightened or set by the policy's ``sandbox`` section."""
        overrides = dict(getattr(self.policy, "sandbox", None) or {})
        unknown = set(overrides) - set(SandboxConfig.model_fields)
        if unknown:
            raise ConfigError(f"{self.policy.path}: sandbox: unknown field(s) {', '.join(sorted(unknown))}")
        return self.config.sandbox.model_copy(update=overrides)

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _close_sessions(self) -> None:
        for session in list(self.sessions.values()):
            with anyio.CancelScope(shield=True):
                await self.close_session(session)

    # -- policy hot reload (called from the policy store's watcher thread) -----------------------

    def _policy_changed(self, policy: Any) -> None:
        self.tokenizer.update_settings(policy.detection, policy.tokens)
        if self.sandbox is not None:  # the policy's sandbox limits, from the next execution on
            self.sandbox.reconfigure(self.sandbox_config())
        self.audit.record_sync(
            ev.AuditEvent(
                kind=ev.POLICY_LOAD,
                principal="veil",
                policy_version=policy.version,
                detail={"path": str(policy.path), "reason": "file changed"},
            )
        )
        log.warning("policy %s reloaded (version %s)", policy.path, policy.version[:12])

    def _policy_rejected(self, error: Exception) -> None:
        self.audit.record_sync(
            ev.AuditEvent(
                kind=ev.POLICY_REJECTED,
                principal="veil",
                outcome=ev.ERROR,
                policy_version=self.policy.version,
                detail={"path": str(self.policies.path), "error": str(error)},
            )
        )
        log.error("policy change rejected, the previous version stays in force: %s", error)

    # -- services for sessions and the pipeline --------------------------------------------------

    @property
    def policy(self) -> Any:
        return self.policies.current

    def code_mode(self) -> bool:
        """Is execute_code offered (config ``expose`` and a sandbox manager)?"""
        return self.config.expose in ("code", "both") and self.sandbox is not None

    def token_scope_kind(self) -> str:
        return self.config.token_scope or self.policy.tokens.scope

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._limiter)

    async def inline_or_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args, inline=True)`` right here on the event loop; if it raises ``WouldBlock``
        (its value is not small, or it needs the database or NER), ``fn(*args)`` in a worker
        thread. Most tool calls carry a few bytes each way (``{}`` in, ``{"ok": true}`` out):
        their (de)tokenising takes microseconds, and the two thread hand-offs it cost each time
        (queue, wake-up, result posted back to the loop) were a large share of Veil's CPU per call."""
        try:
            return fn(*args, inline=True)
        except WouldBlock:
            return await self.in_thread(fn, *args)

    async def record(self, event: ev.AuditEvent) -> None:
        """Make an audit event durable; raises AuditUnavailable (fail closed) when it cannot."""
        await self.audit.record(event)

    async def open_session(self, principal: Principal, *, session_id: str | None = None) -> AgentSession:
        session = AgentSession(self, principal, session_id=session_id)
        await self.record(session.event(ev.SESSION_OPEN, detail={"via": principal.via}))
        self.sessions[session.id] = session
        return session

    async def close_session(self, session: AgentSession, *, reason: str = "closed") -> None:
        if session.closed:
            return
        try:
            await session.aclose()
            if self.sandbox is not None:
                await self.sandbox.close_session(session.id)
            await self.record(session.event(ev.SESSION_CLOSE, detail={"reason": reason}))
        except Exception as exc:  # closing must not fail on a full stop; the gap shows in the trail
            log.error("could not audit the close of session %s (%s)", session.id, type(exc).__name__)
        finally:
            self.sessions.pop(session.id, None)  # last: a session gone from here is closed and audited
