"""The token vault: real values at rest, encrypted, in the ``vault_entries`` table.

Per entry: a random 256-bit data key encrypts the value with AES-GCM; the associated data binds
the scope, token and entity type, so a row copied onto another token or scope fails to decrypt.
The data key is wrapped (AES-GCM) by the master key named by ``key_id`` (``crypto.py``). Erasing an entry nulls
the wrapped key, nonce and ciphertext: the value is gone for good (crypto-shredding), while the
row keeps the token "erased" instead of "unknown".

Lookup by value uses ``value_hmac`` = HMAC-SHA256(normalised value) under a key HKDF-derived from
the master key. It deliberately excludes the scope: a compliance officer can find (and erase)
one person's entries across every session, principal and tenant.

Numbering: tokens are ``[TYPE_N]`` with N counted per (scope, entity type). Several threads and
several Veil processes can tokenise into one scope at once; a transaction-scoped advisory lock
per (scope, type) serialises numbering, and ``INSERT ... ON CONFLICT`` on the live-value index
makes a value inserted concurrently by someone else come back with *their* token.

Each process keeps a per-scope cache of live entries (value, token) so repeated values cost no
database round trip, and the exact-match guard can look for every known value. The cache picks
up other processes' new and erased entries every ``refresh_seconds``: once per interval, one
query for the whole process says which scopes gained entries (ids above the highest it saw) or
lost some (erased since its last look), and only those scopes are read again, on their next use.
A scope nobody else wrote to costs no round trip at all, however many sessions are open.
``resolve`` (untokenise) always asks the database, so an erased or expired token never turns
back into a value.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from veil.errors import DatabaseError, TokenError
from veil.tokenizer.crypto import EntryCrypto
from veil.tokenizer.guard import Guard, Guards
from veil.tokenizer.keyring import Keyring
from veil.tokenizer.tokens import UNLINKED_PREFIX, format_token, normal_forms, normalise

log = logging.getLogger(__name__)

_meta = sa.MetaData()
VAULT_TABLE = sa.Table(
    "vault_entries",
    _meta,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("scope", sa.Text, nullable=False),
    sa.Column("entity_type", sa.Text, nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("token", sa.Text, nullable=False),
    sa.Column("value_hmac", sa.LargeBinary, nullable=False),
    sa.Column("key_id", sa.Text, nullable=False),
    sa.Column("wrapped_key", sa.LargeBinary),
    sa.Column("nonce", sa.LargeBinary),
    sa.Column("ciphertext", sa.LargeBinary),
    sa.Column("sources", pg.ARRAY(sa.Text), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("erased_at", sa.DateTime(timezone=True)),
)
_T = VAULT_TABLE.c
_ENTRY_COLS = (_T.id, _T.token, _T.entity_type, _T.value_hmac, _T.sources, _T.expires_at)
_CRYPTO_COLS = (_T.key_id, _T.wrapped_key, _T.nonce, _T.ciphertext)
_DEADLOCK_RETRIES = 5


@dataclass(frozen=True)
class VaultEntryInfo:
    """What a compliance officer may see about one entry: never the value."""

    scope: str
    token: str
    entity_type: str
    created_at: datetime
    expires_at: datetime | None
    erased_at: datetime | None
    sources: tuple[str, ...]


@dataclass
class Entry:
    """A live entry in a process's cache (holds the plaintext: memory only, never logged)."""

    id: int
    token: str
    entity_type: str
    value: str
    value_hmac: bytes
    sources: frozenset[str]
    expires_at: datetime | None


@dataclass
class _ScopeCache:
    lock: threading.Lock = field(default_factory=threading.Lock)
    by_hmac: dict[bytes, Entry] = field(default_factory=dict)
    by_token: dict[str, Entry] = field(default_factory=dict)
    loaded: bool = False
    max_id: int = 0
    db_since: datetime | None = None  # database clock at the last refresh
    # The process-wide check bumps ``wanted`` when it sees rows of this scope the cache has not
    # read; a refresh that succeeds sets ``read`` to the ``wanted`` it started from.
    wanted: int = 0
    read: int = 0
    version: int = 0
    base: Guard | None = None  # over every entry at the time it was built
    base_size: int = 0
    recent: list[Entry] = field(default_factory=list)  # added since ``base`` was built
    delta: Guard | None = None
    guards: Guards | None = None
    guard_version: int = -1

    def put(self, e: Entry) -> None:
        old = self.by_hmac.get(e.value_hmac)
        if old is not None and old.token != e.token:
            self.by_token.pop(old.token, None)
            self.base = None  # a replaced entry must leave the automaton
        self.by_hmac[e.value_hmac] = e
        self.by_token[e.token] = e
        self.max_id = max(self.max_id, e.id)
        self.recent.append(e)
        self.version += 1

    def drop_token(self, token: str) -> None:
        e = self.by_token.pop(token, None)
        if e is not None and self.by_hmac.get(e.value_hmac) is e:
            del self.by_hmac[e.value_hmac]
            self.base = None
            self.version += 1


#: The process-wide change check (``Vault._watch``): the database clock, the highest entry id,
#: and the scopes with rows above the id seen last time or erased since the last look. Both
#: halves are index scans (the primary key; the partial index on erased rows, migration 0005).
_WATCH = sa.text(
    """
    SELECT now() AS db_now,
           (SELECT max(id) FROM vault_entries) AS max_id,
           ARRAY(SELECT scope FROM vault_entries WHERE id > :seen
                 UNION SELECT scope FROM vault_entries WHERE erased_at >= :since) AS scopes
    """
).bindparams(sa.bindparam("seen", type_=sa.BigInteger), sa.bindparam("since", type_=sa.DateTime(timezone=True)))
_ERASE_SLACK = timedelta(seconds=5)  # an erasure committed this long after its now() is still seen


def _with_source(source: str):
    """``sources`` with ``source`` added once (SQL expression for UPDATE and ON CONFLICT)."""
    return sa.case(
        (sa.literal(source) == sa.any_(_T.sources), _T.sources),
        else_=sa.func.array_append(_T.sources, sa.cast(sa.literal(source), sa.Text)),
    )


def _is_deadlock(exc: sa.exc.DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) in ("40P01", "40001")


# The write path's two statements in the driver's own syntax, so that the arrays are sent in
# binary (psycopg's ``%(name)b``): as text, every bytea element is hex-escaped in Python on the way
# out and parsed back by the server, which cost more than the insert itself for a few thousand
# new entries (bench/RESULTS.md, "Tokenising a 400-record CRM export").
_EXISTING = f"""
    SELECT {", ".join(c.name for c in (*_ENTRY_COLS, *_CRYPTO_COLS))} FROM vault_entries
    WHERE scope = %(scope)s AND erased_at IS NULL AND value_hmac = ANY(%(hmacs)b::bytea[])
"""
_INSERT = """
    INSERT INTO vault_entries
        (scope, entity_type, n, token, value_hmac, key_id, wrapped_key, nonce, ciphertext, sources, expires_at)
    SELECT %(scope)s, %(entity_type)s, u.n, u.token, u.h, u.kid, u.wk, u.nonce, u.ct, ARRAY[%(source)s]::text[],
           {expiry}
    FROM unnest(%(ns)b::integer[], %(tokens)b::text[], %(hmacs)b::bytea[], %(kids)b::text[],
                %(wrapped)b::bytea[], %(nonces)b::bytea[], %(cts)b::bytea[]) AS u(n, token, h, kid, wk, nonce, ct)
    ON CONFLICT (scope, value_hmac) WHERE erased_at IS NULL DO UPDATE SET
        sources = CASE WHEN %(source)s = ANY(vault_entries.sources) THEN vault_entries.sources
                       ELSE array_append(vault_entries.sources, %(source)s::text) END,
        expires_at = EXCLUDED.expires_at
    RETURNING id, token, entity_type, value_hmac, sources, expires_at, key_id, wrapped_key, nonce, ciphertext,
              (xmax = 0) AS inserted
"""


class Vault:
    """Encrypted token storage for every scope, shared by all threads of a process."""

    def __init__(
        self,
        engine: sa.Engine,
        keyring: Keyring,
        *,
        ttl_seconds: int | None = None,
        refresh_seconds: float = 2.0,
        max_scopes: int = 1024,
    ) -> None:
        self.engine = engine
        self.keyring = keyring
        self.ttl_seconds = ttl_seconds
        self.refresh_seconds = refresh_seconds
        self.max_scopes = max_scopes
        self._crypto = EntryCrypto(keyring)
        self._scopes: OrderedDict[str, _ScopeCache] = OrderedDict()
        self._scopes_lock = threading.Lock()
        # The process-wide change check: when it ran (monotonic), what it saw (highest id, clock).
        self._watch_lock = threading.Lock()
        self._watched = -math.inf
        self._seen_id: int | None = None
        self._seen_at: datetime | None = None

    def value_hmac(self, normalised: str) -> bytes:
        return self._crypto.value_hmac(normalised)

    def _entry_from_row(self, scope: str, row, value: str | None = None) -> Entry:
        if value is None:
            value = self._crypto.open(
                scope, row.token, row.entity_type, row.key_id, row.wrapped_key, row.nonce, row.ciphertext
            )
        return Entry(row.id, row.token, row.entity_type, value, row.value_hmac, frozenset(row.sources), row.expires_at)

    # -- the per-scope cache ------------------------------------------------------------------
    def _cache(self, scope: str) -> _ScopeCache:
        with self._scopes_lock:
            cache = self._scopes.get(scope)
            if cache is None:
                cache = self._scopes[scope] = _ScopeCache()
                while len(self._scopes) > self.max_scopes:
                    self._scopes.popitem(last=False)
            else:
                self._scopes.move_to_end(scope)
            return cache

    def _watch(self) -> None:
        """Once per ``refresh_seconds`` for the whole process: which scopes did other processes
        add entries to or erase entries from since the last look? Those caches are marked to be
        read again on their next use; the others are not read at all. (Before, every scope in
        use paid two queries per interval: with fifty sessions, a round trip on most calls.)"""
        if time.monotonic() - self._watched < self.refresh_seconds:
            return
        with self._watch_lock:
            started = time.monotonic()
            if started - self._watched < self.refresh_seconds:
                return  # another thread looked while this one waited
            seen = self._seen_id
            since = self._seen_at - _ERASE_SLACK if self._seen_at is not None else None
            with self._connect() as conn:
                row = conn.execute(_WATCH, {"seen": seen, "since": since}).one()
            if seen is not None:  # the first look only sets the marks: every cache loads in full
                with self._scopes_lock:
                    for scope in row.scopes:
                        cache = self._scopes.get(scope)
                        if cache is not None:
                            cache.wanted += 1
            self._seen_id = max(seen or 0, row.max_id or 0)
            self._seen_at = row.db_now
            self._watched = started

    def _refresh(self, scope: str, cache: _ScopeCache, *, force: bool = False) -> None:
        """Load the scope's live entries the first time; later, pick up rows other processes added
        or erased since the last look, when the process-wide check saw some. Caller holds
        ``cache.lock``."""
        self._watch()
        if cache.loaded and not force and cache.read == cache.wanted:
            return
        wanted = cache.wanted
        with self._connect() as conn:
            db_now = conn.execute(sa.select(sa.func.now())).scalar_one()
            query = sa.select(*_ENTRY_COLS, *_CRYPTO_COLS, _T.erased_at).where(_T.scope == scope)
            if cache.loaded:
                since = cache.db_since - _ERASE_SLACK if cache.db_since else db_now
                query = query.where(sa.or_(_T.id > cache.max_id, _T.erased_at >= since))
            else:
                query = query.where(_T.erased_at.is_(None))
            rows = conn.execute(query).all()
        for row in rows:
            if row.erased_at is not None:
                cache.drop_token(row.token)
            elif row.token not in cache.by_token:
                try:
                    cache.put(self._entry_from_row(scope, row))
                except TokenError as exc:  # one damaged row must not stop the scope; resolve() reports it
                    log.warning("vault: skipping an entry of scope %s: %s", scope, exc)
        cache.loaded, cache.db_since, cache.read = True, db_now, wanted

    def cached_guard(self, scope: str) -> Guards | None:
        """The scope's guard if it can be had at once, else None (then call ``guard`` from a
        worker thread). At once means: no database round trip (the scope is loaded, the process-
        wide check is not due and saw nothing new for it) and no automaton to build. Never waits
        for a lock held across I/O, so the gateway may call it on its event loop for tiny
        payloads instead of paying a thread hand-off on every call."""
        if time.monotonic() - self._watched >= self.refresh_seconds:
            return None
        with self._scopes_lock:
            cache = self._scopes.get(scope)
            if cache is None:
                return None
            self._scopes.move_to_end(scope)
        if not cache.lock.acquire(blocking=False):
            return None
        try:
            fresh = cache.loaded and cache.read == cache.wanted and cache.guard_version == cache.version
            return cache.guards if fresh else None
        finally:
            cache.lock.release()

    def guard(self, scope: str) -> Guards:
        """The exact-match guard over the scope's known values. The big automaton is rebuilt only
        when the values added since outgrow a quarter of it; newer values sit in a small one."""
        cache = self._cache(scope)
        with cache.lock:
            self._refresh(scope, cache)
            if cache.guards is not None and cache.guard_version == cache.version:
                return cache.guards
            if cache.base is None or len(cache.recent) > max(500, cache.base_size // 4):
                cache.base = Guard((e.value, e.token, e.entity_type) for e in cache.by_hmac.values())
                cache.base_size, cache.recent, cache.delta = len(cache.by_hmac), [], None
            else:
                cache.delta = Guard((e.value, e.token, e.entity_type) for e in cache.recent)
            cache.guards = Guards(*(g for g in (cache.base, cache.delta) if g is not None))
            cache.guard_version = cache.version
            return cache.guards

    @contextlib.contextmanager
    def _connect(self, *, write: bool = False) -> Iterator[sa.Connection]:
        """A connection (a transaction when ``write``) whose driver errors become DatabaseError
        without SQL parameters in the message; deadlocks pass through for ``assign`` to retry."""
        try:
            with self.engine.begin() if write else self.engine.connect() as conn:
                yield conn
        except sa.exc.DBAPIError as exc:
            if _is_deadlock(exc):
                raise
            state = getattr(exc.orig, "sqlstate", None) or type(exc.orig).__name__
            raise DatabaseError(
                f"the token vault's database failed ({state}); check database_url and that the server is up"
            ) from None

    # -- tokenise side ------------------------------------------------------------------------
    def assign(self, scope: str, items: list[tuple[str, str]], source: str) -> list[Entry]:
        """The entry (token) for each (value, entity type), creating entries as needed.

        A value already in the scope keeps its token whatever type it is detected as now."""
        cache = self._cache(scope)
        with cache.lock:
            self._refresh(scope, cache)
            out: list[Entry | None] = [None] * len(items)
            missing: dict[bytes, tuple[str, str, list[int]]] = {}
            touch: dict[int, Entry] = {}
            renew_before = self._renew_threshold()
            for i, (value, entity_type) in enumerate(items):
                h = self.value_hmac(normalise(value, entity_type))
                e = cache.by_hmac.get(h)
                if e is None:
                    missing.setdefault(h, (value, entity_type, []))[2].append(i)
                    continue
                out[i] = e
                if source not in e.sources or (renew_before and e.expires_at and e.expires_at < renew_before):
                    touch[e.id] = e
            if missing or touch:
                for attempt in range(_DEADLOCK_RETRIES):
                    try:
                        self._write(scope, cache, missing, touch, source, out)
                        break
                    except sa.exc.DBAPIError as exc:
                        if not _is_deadlock(exc) or attempt == _DEADLOCK_RETRIES - 1:
                            sqlstate = getattr(exc.orig, "sqlstate", None)
                            raise DatabaseError(f"writing to the token vault failed: {sqlstate}") from None
        return out  # type: ignore[return-value]

    def _renew_threshold(self) -> datetime | None:
        if not self.ttl_seconds:
            return None
        # renew when less than half the lifetime is left: a value still being seen stays usable
        return datetime.now().astimezone() + timedelta(seconds=self.ttl_seconds / 2)

    def _expiry(self):
        if not self.ttl_seconds:
            return None
        return sa.func.now() + sa.text(f"interval '{int(self.ttl_seconds)} seconds'")

    def _write(
        self,
        scope: str,
        cache: _ScopeCache,
        missing: dict[bytes, tuple[str, str, list[int]]],
        touch: dict[int, Entry],
        source: str,
        out: list[Entry | None],
    ) -> None:
        results: dict[bytes, Entry] = {}
        with self._connect(write=True) as conn:
            if missing:
                # Rows another process created since our last refresh: take them as they are.
                rows = conn.exec_driver_sql(_EXISTING, {"scope": scope, "hmacs": list(missing)}).all()
                for row in rows:
                    e = self._entry_from_row(scope, row)
                    results[row.value_hmac] = e
                    if source not in e.sources or self.ttl_seconds:
                        touch[e.id] = e
                new = {h: v for h, v in missing.items() if h not in results}
                by_type: dict[str, list[tuple[bytes, str]]] = {}
                for h, (value, entity_type, _) in new.items():
                    by_type.setdefault(entity_type, []).append((h, value))
                types = sorted(by_type)
                # All numbering locks first, in one global order: no lock-order deadlocks.
                for entity_type in types:
                    conn.execute(
                        sa.select(
                            sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(f"{scope}\x1f{entity_type}", 0))
                        )
                    )
                for entity_type in types:
                    results.update(self._insert(conn, scope, entity_type, by_type[entity_type], source))
            if touch:
                conn.execute(
                    VAULT_TABLE.update()
                    .where(_T.id.in_(list(touch)))
                    .values(
                        sources=_with_source(source),
                        **({"expires_at": self._expiry()} if self.ttl_seconds else {}),
                    )
                )
        # Commit succeeded: only now does the cache learn about the new rows.
        for e in touch.values():
            e.sources = e.sources | {source}
            if self.ttl_seconds:
                e.expires_at = datetime.now().astimezone() + timedelta(seconds=self.ttl_seconds)
        for h, e in results.items():
            if source not in e.sources:
                e.sources = e.sources | {source}
            cache.put(e)
            for i in missing[h][2]:
                out[i] = e

    def _insert(
        self, conn: sa.Connection, scope: str, entity_type: str, values: list[tuple[bytes, str]], source: str
    ) -> dict[bytes, Entry]:
        """Number, encrypt and insert new values of one type (caller holds the numbering lock).

        One ``INSERT ... SELECT FROM unnest(arrays)`` statement: a multi-row VALUES statement for
        thousands of rows costs seconds to compile in SQLAlchemy. The arrays travel in binary
        (``_INSERT``)."""
        start = conn.execute(
            sa.select(sa.func.coalesce(sa.func.max(_T.n), 0)).where(_T.scope == scope, _T.entity_type == entity_type)
        ).scalar_one()
        plain: dict[bytes, str] = {}
        cols: dict[str, list] = {
            "ns": [],
            "tokens": [],
            "hmacs": [],
            "kids": [],
            "wrapped": [],
            "nonces": [],
            "cts": [],
        }
        for k, (h, value) in enumerate(values, start=start + 1):
            token = format_token(entity_type, k)
            kid, wrapped, nonce, ct = self._crypto.seal(scope, token, entity_type, value)
            plain[h] = value
            for name, v in zip(cols, (k, token, h, kid, wrapped, nonce, ct), strict=True):
                cols[name].append(v)
        expiry = f"now() + make_interval(secs => {int(self.ttl_seconds)})" if self.ttl_seconds else "NULL::timestamptz"
        out: dict[bytes, Entry] = {}
        params = {"scope": scope, "entity_type": entity_type, "source": source, **cols}
        rows = conn.exec_driver_sql(_INSERT.replace("{expiry}", expiry), params)
        for row in rows:
            # inserted: our plaintext; conflict: someone else's row, decrypt their value
            out[row.value_hmac] = self._entry_from_row(scope, row, plain[row.value_hmac] if row.inserted else None)
        return out

    # -- untokenise side ----------------------------------------------------------------------
    def resolve(self, scope: str, tokens: Iterable[str]) -> dict[str, Entry]:
        """Live entries for ``tokens``; TokenError for the first unknown, erased or expired one.

        Always asks the database, so an erasure or expiry made by another process counts at once."""
        wanted = sorted(set(tokens))
        if not wanted:
            return {}
        with self._connect() as conn:
            rows = {
                r.token: r
                for r in conn.execute(
                    sa.select(
                        *_ENTRY_COLS,
                        *_CRYPTO_COLS,
                        _T.erased_at,
                        sa.and_(_T.expires_at.is_not(None), _T.expires_at <= sa.func.now()).label("expired"),
                    ).where(_T.scope == scope, _T.token.in_(wanted))
                )
            }
        out: dict[str, Entry] = {}
        for token in wanted:
            row = rows.get(token)
            if row is None and token.startswith("[" + UNLINKED_PREFIX):
                raise TokenError(
                    f"token {token} stands for a value that code in the sandbox printed or returned: such values "
                    "get throwaway tokens that never turn back into a value (so printing guesses cannot reveal "
                    "which one is real). Use the value itself in your code, or a token from a tool result."
                )
            if row is None:
                raise TokenError(
                    f"token {token} is not known in this scope: it was never issued here (tokens are only valid "
                    "in the session or scope whose tool results contained them). Use a token exactly as it "
                    "appeared in a tool result, or write the text without the square brackets."
                )
            if row.erased_at is not None:
                raise TokenError(
                    f"token {token} refers to a value that was erased from the vault (data-subject erasure); "
                    "it can no longer be turned into a real value. Do not use it in tool arguments."
                )
            if row.expired:
                raise TokenError(
                    f"token {token} has expired (tokens live {self.ttl_seconds or 'a limited number of'} seconds "
                    "here); call the tool that produced it again to get a current token."
                )
            out[token] = self._entry_from_row(scope, row)
        return out

    # -- compliance ---------------------------------------------------------------------------
    def _hmacs_for(self, value: str) -> list[bytes]:
        return [self.value_hmac(form) for form in normal_forms(value)]

    def find_entries(self, value: str) -> list[VaultEntryInfo]:
        """Every entry, in every scope, whose value normalises like ``value`` (found by HMAC, no
        decryption). Includes erased and expired entries, oldest first."""
        with self._connect() as conn:
            rows = conn.execute(
                sa.select(_T.scope, _T.token, _T.entity_type, _T.created_at, _T.expires_at, _T.erased_at, _T.sources)
                .where(_T.value_hmac.in_(self._hmacs_for(value)))
                .order_by(_T.created_at, _T.id)
            ).all()
        return [
            VaultEntryInfo(r.scope, r.token, r.entity_type, r.created_at, r.expires_at, r.erased_at, tuple(r.sources))
            for r in rows
        ]

    def erase_entries(self, value: str) -> list[VaultEntryInfo]:
        """Crypto-shred every live entry for ``value`` in every scope; returns what was erased.

        Their tokens then fail with "erased". The value itself, seen again later from an upstream,
        gets a new token (it must still never reach the agent raw)."""
        with self._connect(write=True) as conn:
            rows = conn.execute(
                VAULT_TABLE.update()
                .where(_T.value_hmac.in_(self._hmacs_for(value)), _T.erased_at.is_(None))
                .values(wrapped_key=None, nonce=None, ciphertext=None, erased_at=sa.func.now())
                .returning(_T.scope, _T.token, _T.entity_type, _T.created_at, _T.expires_at, _T.erased_at, _T.sources)
            ).all()
        for r in rows:
            with self._scopes_lock:
                cache = self._scopes.get(r.scope)
            if cache is not None:
                with cache.lock:
                    cache.drop_token(r.token)
        log.info("vault: erased %d entries", len(rows))
        return [
            VaultEntryInfo(r.scope, r.token, r.entity_type, r.created_at, r.expires_at, r.erased_at, tuple(r.sources))
            for r in rows
        ]

    def purge_expired(self) -> int:
        """Crypto-shred entries whose TTL has passed (their tokens then report "erased")."""
        with self._connect(write=True) as conn:
            n = conn.execute(
                VAULT_TABLE.update()
                .where(_T.erased_at.is_(None), _T.expires_at <= sa.func.now())
                .values(wrapped_key=None, nonce=None, ciphertext=None, erased_at=sa.func.now())
            ).rowcount
        for cache in list(self._scopes.values()):
            with cache.lock:
                cache.loaded = False
                cache.by_hmac.clear()
                cache.by_token.clear()
                cache.version += 1
        return n
