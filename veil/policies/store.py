"""Hot reload: the policy in force, replaced atomically when its file changes.

A background thread polls the file (mtime and size every ``interval`` seconds, then the sha256 of
its bytes, so a touch without a change does nothing). A new version that loads cleanly replaces
``current`` in one assignment — sessions keep running and simply see the new policy on their next
decision — and ``on_change(policy)`` is called. A version that fails to load is *rejected*: the
lint message is logged, ``on_rejected(error)`` is called, and the old policy stays in force. The
same broken bytes are reported once, not on every poll.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from veil.errors import PolicyError
from veil.policies.loader import load_policy
from veil.policies.model import Policy

log = logging.getLogger(__name__)


class PolicyStore:
    """Holds the policy in force; ``start()`` begins watching the file, ``stop()`` ends it."""

    def __init__(
        self,
        path: str | Path,
        on_change: Callable[[Policy], None] | None = None,
        on_rejected: Callable[[PolicyError], None] | None = None,
        *,
        interval: float = 1.0,
    ) -> None:
        self.path = Path(path)
        self.on_change = on_change
        self.on_rejected = on_rejected
        self.interval = interval
        self._current = load_policy(self.path)  # a broken policy at start is fatal: raise
        self._stat = self._stat_key()
        self._seen_digest = self._current.version
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> Policy:
        return self._current

    def _stat_key(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def check(self) -> bool:
        """Look at the file once; returns True when a new version was put in force."""
        with self._lock:
            key = self._stat_key()
            if key == self._stat:
                return False
            self._stat = key
            try:
                digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
            except OSError as exc:
                return self._reject(PolicyError(f"cannot read policy file ({exc.strerror})", file=str(self.path)), None)
            if digest == self._seen_digest:
                return False
            self._seen_digest = digest
            try:
                policy = load_policy(self.path)
            except PolicyError as exc:
                return self._reject(exc, digest)
            if policy.version == self._current.version:
                return False
            old = self._current.version
            self._current = policy
        log.info("policy %s: version %s now in force (was %s)", self.path, policy.version[:12], old[:12])
        if self.on_change is not None:
            self.on_change(policy)
        return True

    def _reject(self, error: PolicyError, digest: str | None) -> bool:
        log.error("policy %s rejected, version %s stays in force: %s", self.path, self._current.version[:12], error)
        if self.on_rejected is not None:
            self.on_rejected(error)
        return False

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # a bug in a callback must not stop watching
                log.exception("policy watcher for %s failed; continuing", self.path)

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"policy-watch:{self.path.name}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> PolicyStore:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
