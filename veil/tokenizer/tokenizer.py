"""The tokenizer stage: upstream results in, tokenised results out; tokenised arguments in, real
arguments out (only where the policy's ``decide`` allows each flow).

``tokenize`` (detect ▸ vault ▸ replace), for one JSON-like value:

1. walk the value (``walker``): strings and PII-keyed numbers become slots; JSON inside strings
   is walked too;
2. a slot under a PII key (``hints``) is one entity, whole; every other string goes through the
   batched pattern pass, and free text through one batched NER pass (``detector``);
3. every value found gets its token from the vault (``vault``), one transaction for all new ones;
4. the exact-match guard (``guard``) replaces values already known in the scope wherever they
   reappear, and first/last names of known people written alone;
5. the value is rebuilt with tokens in place.

Thread-safe and synchronous: the gateway calls it from worker threads, or on its event loop with
``inline=True`` for small values (``WouldBlock`` sends those to a thread when they need I/O).
"""

from __future__ import annotations

import array
import bisect
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import sqlalchemy as sa

from veil.errors import TokenizeBudgetExceeded
from veil.tokenizer.detector import Detector, TextItem
from veil.tokenizer.escapes import Unescaped, decoded, unescaped
from veil.tokenizer.guard import Guard, GuardHit
from veil.tokenizer.hints import HintTable
from veil.tokenizer.keyring import Keyring
from veil.tokenizer.settings import DetectionSettings, TokenSettings
from veil.tokenizer.substitute import ContextFor, Render, Where, default_context, plan, splice, substitute_json
from veil.tokenizer.tokens import (
    ALNUM_TYPES,
    DIGIT_TYPES,
    TOKEN_RE,
    TOKENIZE_MODES,
    UNLINKED_PREFIX,
    Deadline,
    Scope,
    Tokenized,
    TokenizeMode,
    TokenRef,
    Untokenized,
    WouldBlock,
    format_token,
    normalise,
    small,
)
from veil.tokenizer.vault import Vault
from veil.tokenizer.walker import is_free_text, walk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Hit:
    start: int
    end: int
    entity_type: str
    value: str
    token: str | None = None  # known already (guard) or filled in from the vault


class Tokenizer:
    """Detection, tokens and the vault behind the two calls the gateway makes."""

    def __init__(
        self, engine: sa.Engine, keyring: Keyring, detection: DetectionSettings, tokens: TokenSettings
    ) -> None:
        self._detector = Detector(detection)
        self._hints = HintTable(detection.field_hints)
        self._token_settings = tokens
        self.vault = Vault(engine, keyring, ttl_seconds=tokens.ttl_seconds)

    @property
    def detector(self) -> Detector:
        return self._detector

    def update_settings(self, detection: DetectionSettings, tokens: TokenSettings) -> None:
        """Hot reload: new settings apply to the next call; the spaCy model is reused if unchanged."""
        old = self._detector
        if detection != old.settings:
            same_model = (detection.spacy_model, detection.language) == (
                old.settings.spacy_model,
                old.settings.language,
            )
            new = Detector(detection, nlp=old.nlp, model_name=old.model_name) if same_model else Detector(detection)
            self._hints = HintTable(detection.field_hints)
            self._detector = new
        self._token_settings = tokens
        self.vault.ttl_seconds = tokens.ttl_seconds

    # -- tokenise -----------------------------------------------------------------------------
    def tokenize(
        self,
        value: Any,
        scope: Scope,
        source: str,
        *,
        mode: TokenizeMode = "data",
        deadline: Deadline | None = None,
        inline: bool = False,
    ) -> Tokenized:
        """``value`` with every PII value found replaced by its token (a new value; the input is
        never modified).

        ``mode`` (docs/tokens.md, "Modes"): ``"data"`` for upstream payloads; ``"interface"`` for
        listings, schemas and stub files (patterns and the guard, no key hints, no NER, no name or
        place heuristics, so "Get Sum Tool" stays as it is); ``"sandbox_output"`` for what code in
        the sandbox printed or returned (detection only, tokens of a throwaway scope that are never
        linked to the scope's own: no equality oracle). ``deadline``: checked between stages and
        slots; when it has passed, ``TokenizeBudgetExceeded`` is raised and nothing is returned.

        ``inline``: the caller is an event loop. The same detection runs, but the call raises
        ``WouldBlock`` (having changed nothing) instead of blocking: when the value is not
        ``small``, or when finishing needs the vault's database (a new or renewed entry, a cache
        refresh) or NER. The gateway then repeats the call in a worker thread."""
        if mode not in TOKENIZE_MODES:
            raise ValueError(f"tokenize mode must be one of {', '.join(TOKENIZE_MODES)}, not {mode!r}")
        if inline and not small(value):
            raise WouldBlock
        detector = self._detector
        check = deadline.check if deadline is not None else _no_check
        w = walk(value, None if mode == "interface" else self._hints)
        check("walking the value")
        assign: Callable[[list[tuple[str, str]]], list[tuple[str, str]]]
        if mode == "sandbox_output":
            assign = _Unlinked().assign  # in memory: never blocks
        else:
            assign = _would_block if inline else self._vault_assign(scope, source)
        hits: list[list[_Hit]] = [[] for _ in w.slots]

        # 1. a string (or number) under a PII key is one entity, whole; every other slot is
        #    analysed once per distinct (text, context, kind): keys and values repeat a lot
        free: list[int] = []
        same: dict[tuple, int] = {}
        copies: list[tuple[int, int]] = []  # (slot, the slot analysed for it)
        for i, slot in enumerate(w.slots):
            text = slot.text.strip()
            if slot.hint and detector.wants(slot.hint) and not TOKEN_RE.search(slot.text):
                value = decoded(text)  # the vault holds the value, not how it was escaped
                if not detector.allowed_value(value):
                    start = slot.text.index(text)
                    hits[i].append(_Hit(start, start + len(text), slot.hint, value))
                continue
            rep = same.setdefault((slot.text, slot.context, slot.ner, slot.kind, slot.hint), i)
            if rep == i:
                free.append(i)
            else:
                copies.append((i, rep))
        # 2. patterns on every other string, key and long number; values known in the scope
        #    (hinted ones included) found by the guard, except in sandbox output. When the
        #    patterns go to the worker processes, this thread writes the hinted fields' vault
        #    entries and runs the guard meanwhile (it would only wait for the workers otherwise)
        #    Each text is analysed with its escapes decoded (``escapes``: %40, &#39;, \\u00e9),
        #    and what is found there is mapped back onto the escapes before replacing
        views = [unescaped(w.slots[i].text) for i in free]
        texts = [w.slots[i].text if v is None else v.plain for i, v in zip(free, views, strict=True)]
        scan = [k for k, i in enumerate(free) if w.slots[i].kind != "number" or len(texts[k]) >= _NUMBER_DIGITS]
        at = deadline.at if deadline is not None else None
        items = [TextItem(texts[k], w.slots[free[k]].context) for k in scan]
        background = _Background(detector.patterns, items, at) if not inline and detector.pooled(items) else None
        known: list[list[GuardHit]] = [[] for _ in free]
        real_tokens: frozenset[str] = frozenset()  # the scope's tokens (sandbox output has none)
        try:
            _fill_tokens(hits, assign)
            check("tokenising hinted fields")
            if not free:
                return self._finish(w, hits, copies)
            if mode != "sandbox_output":
                guard = self.vault.cached_guard(scope.key) if inline else self.vault.guard(scope.key)
                if guard is None:
                    raise WouldBlock
                real_tokens = guard.tokens
                for k, t in enumerate(texts):
                    known[k] = guard.find(t)
                    if k % 256 == 255:
                        check("the exact-match guard")
            check("the exact-match guard")
        finally:
            if background is not None:
                background.join()  # no worker is left busy for a call that failed
        with _budget(deadline, "pattern detection"):
            found = background.result() if background is not None else detector.patterns(items, at)
        raw: list[list] = [[] for _ in free]
        for k, spans in zip(scan, found, strict=True):
            raw[k] = _interface_spans(spans) if mode == "interface" else spans
        check("pattern detection")

        # Only the scope's tokens shelter what they hold from detection; sandbox output holds no
        # raw value to hide in a token-shaped string, and its own tokens are not the scope's
        sheltered = None if mode == "sandbox_output" else real_tokens
        # 3. NER on the sentences of free text that still hold a capitalised word nothing above
        #    explains (the model's context is a few words: the other sentences add nothing)
        ner_items: list[tuple[int, TextItem]] = []
        resolved: dict[int, list] = {}  # spans already resolved, kept where NER adds nothing
        if mode != "interface":
            for k, i in enumerate(free):
                if not (w.slots[i].ner or (w.slots[i].hint is not None and is_free_text(texts[k]))):
                    continue
                resolved[k] = detector.resolve(texts[k], raw[k], sheltered)
                focus = detector.ner_focus(texts[k], [*resolved[k], *known[k]], sheltered)
                if focus:
                    ner_items.append((k, TextItem(texts[k], ner=True, focus=tuple(focus))))
        if inline and ner_items:
            raise WouldBlock  # NER runs in worker processes: a wait
        with _budget(deadline, "NER"):
            ner = detector.ner([item for _, item in ner_items], at)
        for (k, _), spans in zip(ner_items, ner, strict=True):
            if spans:
                raw[k].extend(spans)
                del resolved[k]
        check("NER")
        before = {g.token for found in known for g in found} | {h.token for slot_hits in hits for h in slot_hits}
        for k, i in enumerate(free):
            spans = resolved[k] if k in resolved else detector.resolve(texts[k], raw[k], sheltered)
            if w.slots[i].kind == "number":
                spans = [s for s in spans if s.entity_type in NUMBER_TYPES and s.end - s.start >= len(texts[k]) - 1]
            found_hits = [_detected(texts[k], s.start, s.end, s.entity_type) for s in spans]
            hits[i] = _merge(texts[k], found_hits, self._usable(known[k], detector))
        _fill_tokens(hits, assign)
        check("assigning tokens")

        # 4. values first found in this call (by NER in one note) replaced everywhere in it
        fresh = {h.token: h for k, i in enumerate(free) for h in hits[i] if h.token and h.token not in before}
        for _ in range(2):
            if not fresh:
                break
            new_values = Guard((h.value, h.token, h.entity_type) for h in fresh.values() if h.token)
            sheltering = real_tokens | new_values.tokens
            for k, i in enumerate(free):
                found = new_values.find(texts[k], sheltering)
                extra = _uncovered(self._usable(found, detector), hits[i])
                if extra:
                    hits[i] = _merge(texts[k], hits[i], extra)
            known_tokens = {h.token for slot_hits in hits for h in slot_hits}
            _fill_tokens(hits, assign)
            fresh = {h.token: h for i in free for h in hits[i] if h.token and h.token not in known_tokens}
            check("the exact-match guard (values new in this call)")
        for k, i in enumerate(free):
            view = views[k]
            if view is not None and hits[i]:
                hits[i] = _onto_original(view, hits[i])
        return self._finish(w, hits, copies)

    def _vault_assign(self, scope: Scope, source: str) -> Callable[[list[tuple[str, str]]], list[tuple[str, str]]]:
        def assign(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
            return [(e.token, e.entity_type) for e in self.vault.assign(scope.key, items, source)]

        return assign

    @staticmethod
    def _finish(w, hits: list[list[_Hit]], copies: list[tuple[int, int]]) -> Tokenized:
        for i, rep in copies:
            hits[i] = hits[rep]
        entities: dict[str, int] = {}
        tokens: dict[str, None] = {}
        for slot, slot_hits in zip(w.slots, hits, strict=True):
            if not slot_hits:
                continue
            slot.replacement = _replace(slot.text, slot_hits)
            for h in slot_hits:
                entities[h.entity_type] = entities.get(h.entity_type, 0) + 1
                tokens[h.token] = None  # type: ignore[index]
        out = w.finish()
        log.debug("tokenized %d strings: %s", len(w.slots), entities)
        return Tokenized(out, entities, list(tokens))

    @staticmethod
    def _usable(found: list[GuardHit], detector: Detector) -> list[_Hit]:
        return [
            _Hit(g.start, g.end, g.entity_type, g.value, g.token)
            for g in found
            if detector.wants(g.entity_type) and not detector.allowed_value(g.value)
        ]

    # -- untokenise ---------------------------------------------------------------------------
    def untokenize(
        self,
        value: Any,
        scope: Scope,
        decide: Callable[[TokenRef, str], None],
        context_for: ContextFor | None = None,
        *,
        destination: str = "the upstream tool",
        inline: bool = False,
    ) -> Untokenized:
        """Real values for every token in ``value`` (also inside longer strings and JSON text),
        each written the way the place it stands needs (``substitute``).

        ``context_for(path)`` names each argument's context (``sql``, ``json``, ``shell``,
        ``raw``; default: by argument name, see ``default_context``); ``destination`` names the
        tool in refusals. Order, all before anything is returned: every token's place is checked
        (``SubstitutionRefused``, before the vault is read), every token must be live in ``scope``
        (else ``TokenError``, before any decision), every occurrence is put to ``decide(ref, path)``,
        then all values are written in; if any step raises, nothing is returned.

        ``inline`` (an event loop calling): ``WouldBlock`` instead of reading the vault, or when
        the value is not ``small``; a small value without tokens is answered at once."""
        if inline and not small(value):
            raise WouldBlock
        found: list[tuple[str, str]] = []  # (token, path)
        texts: dict[tuple[str, str], None] = {}  # (path, string) of every string holding a token
        _collect_tokens(value, "$", found, texts)
        if not found:
            return Untokenized(value, [])
        if inline:
            raise WouldBlock  # the vault is read for every token: a database round trip
        renders = _plan(texts, context_for or default_context, destination)
        entries = self.vault.resolve(scope.key, (t for t, _ in found))
        used: list[tuple[TokenRef, str]] = []
        refs = {t: TokenRef(t, e.entity_type, e.sources) for t, e in entries.items()}
        for token, path in found:
            decide(refs[token], path)
            used.append((refs[token], path))
        values = {t: e.value for t, e in entries.items()}
        return Untokenized(_substitute(value, values, renders, "$"), used)


# -- helpers ----------------------------------------------------------------------------------
#: Types a bare number is tokenised as when detection finds one covering all its digits (numbers
#: under a PII key are hinted; any number holding a known value is caught by the guard).
NUMBER_TYPES = DIGIT_TYPES | ALNUM_TYPES
_NUMBER_DIGITS = 7  # shorter bare numbers (counts, amounts, years) skip pattern detection
#: Interface text is not a record: names and places found by heuristics there are words of a
#: title or description ("Get Sum Tool"); known names and places are still caught by the guard.
_HEURISTIC_TYPES = frozenset({"PERSON", "LOCATION", "NRP", "DATE_TIME", "ORGANIZATION"})


def _no_check(stage: str) -> None:
    return None


def _would_block(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``assign`` for inline calls: tokens come from the vault, which may need the database."""
    raise WouldBlock


@contextlib.contextmanager
def _budget(deadline: Deadline | None, stage: str) -> Iterator[None]:
    """Detection checks the deadline inside its own passes; its error is re-raised with the
    message that names the setting (detection does not know it)."""
    try:
        yield
    except TokenizeBudgetExceeded:
        if deadline is None:
            raise
        deadline.check(stage)
        raise


def _interface_spans(spans: list) -> list:
    return [s for s in spans if s.entity_type not in _HEURISTIC_TYPES]


def _fill_tokens(hits: list[list[_Hit]], assign: Callable[[list[tuple[str, str]]], list[tuple[str, str]]]) -> None:
    todo = [(i, k) for i, slot_hits in enumerate(hits) for k, h in enumerate(slot_hits) if h.token is None]
    if not todo:
        return
    assigned = assign([(hits[i][k].value, hits[i][k].entity_type) for i, k in todo])
    for (i, k), (token, entity_type) in zip(todo, assigned, strict=True):
        h = hits[i][k]
        hits[i][k] = _Hit(h.start, h.end, entity_type, h.value, token)


class _Background:
    """``fn(*args)`` in a thread of its own: its result, or its exception re-raised, from
    ``result``. One thread per large call (not a shared executor): a call never queues behind
    another session's."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._out: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), name="veil-patterns", daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple) -> None:
        try:
            self._out = fn(*args)
        except BaseException as exc:  # re-raised in the caller's thread
            self._error = exc

    def join(self) -> None:
        self._thread.join()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._out


class _Unlinked:
    """Tokens for values in sandbox output: numbered in memory for this one call, deterministic
    within it, never stored and never looked up in the vault. The sandbox never receives a raw
    value, so a raw value in its output is one the code made (a guess); linking it to the
    scope's token would tell the agent which guess is a real customer's (an equality oracle).
    The ``CODE_`` prefix keeps them apart from the scope's tokens: ``untokenize`` refuses them."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str], str] = {}
        self._counts: dict[str, int] = {}

    def assign(self, items: list[tuple[str, str]]) -> list[tuple[str, str]]:
        out = []
        for value, entity_type in items:
            key = (entity_type, normalise(value, entity_type))
            token = self._tokens.get(key)
            if token is None:
                n = self._counts[entity_type] = self._counts.get(entity_type, 0) + 1
                token = self._tokens[key] = format_token(UNLINKED_PREFIX + entity_type, n)
            out.append((token, entity_type))
        return out


def _uncovered(found: list[_Hit], hits: list[_Hit]) -> list[_Hit]:
    """The hits of ``found`` that no hit of ``hits`` at least as long overlaps. ``hits`` are
    sorted and do not overlap (``_merge``'s output), so only the hits inside each found span are
    looked at: linear, where a pairwise test was quadratic on long texts."""
    ends = [o.end for o in hits]
    out = []
    for h in found:
        covered = False
        j = bisect.bisect_right(ends, h.start)
        while j < len(hits) and hits[j].start < h.end:
            if (hits[j].end - hits[j].start) >= (h.end - h.start):
                covered = True
                break
            j += 1
        if not covered:
            out.append(h)
    return out


def _merge(text: str, existing: list[_Hit], extra: list[_Hit]) -> list[_Hit]:
    """Longest first; a longer hit replaces the shorter ones it covers. Hits that only partly
    overlap (a recognizer's "Eoin L", the guard's "Lewandowski") become one hit over both, so no
    part of either is left raw; it takes the longer one's type and gets a token of its own.
    A coverage map (and which hit owns each character) instead of pairwise overlap tests keeps
    this linear in the hits and their lengths."""
    hits = [*existing, *extra]
    if not hits:
        return []
    size = max(h.end for h in hits)
    covered = bytearray(size)
    owner = array.array("i", bytes(4 * size))
    out: list[_Hit | None] = []

    def take(h: _Hit) -> None:
        covered[h.start : h.end] = b"\x01" * (h.end - h.start)
        owner[h.start : h.end] = array.array("i", [len(out)]) * (h.end - h.start)
        out.append(h)

    for h in sorted(hits, key=lambda h: (-(h.end - h.start), h.token is None)):
        if covered.find(1, h.start, h.end) == -1:
            take(h)
        elif covered.find(0, h.start, h.end) != -1:  # partly covered: one hit over all of them
            ids = {owner[p] for p in range(h.start, h.end) if covered[p]}
            parts = [out[i] for i in ids]
            start = min(h.start, *(o.start for o in parts if o))
            end = max(h.end, *(o.end for o in parts if o))
            longest = max((o for o in parts if o), key=lambda o: o.end - o.start)
            for i in ids:
                out[i] = None
            take(_Hit(start, end, longest.entity_type, text[start:end]))
    return sorted((h for h in out if h is not None), key=lambda h: h.start)


_WORD_REACH = 64  # a detected span is widened by at most this many letters either side


def _detected(text: str, start: int, end: int, entity_type: str) -> _Hit:
    """A detected span, widened to whole words: a recognizer that stops inside a word ("Maria L"
    for "Maria Lopez") would otherwise leave the rest of the word raw beside the token. The
    guard's hits are not widened: a known value glued to other letters is the attack it finds."""
    lo = start
    while lo > 0 and start - lo < _WORD_REACH and text[lo - 1].isalpha() and text[lo].isalpha():
        lo -= 1
    hi = end
    while hi < len(text) and hi - end < _WORD_REACH and text[hi].isalpha() and text[hi - 1].isalpha():
        hi += 1
    return _Hit(lo, hi, entity_type, text[lo:hi])


def _onto_original(view: Unescaped, hits: list[_Hit]) -> list[_Hit]:
    """Hits found in the decoded text, as spans of the original: each covers the escapes its
    characters were decoded from, whole. Hits that now touch the same escape become one."""
    out: list[_Hit] = []
    for h in sorted(hits, key=lambda h: h.start):
        start, end = view.span(h.start, h.end)
        if out and start < out[-1].end:
            out[-1] = replace(out[-1], end=max(end, out[-1].end))
        else:
            out.append(replace(h, start=start, end=end))
    return out


def _replace(text: str, hits: list[_Hit]) -> str:
    parts: list[str] = []
    pos = 0
    for h in sorted(hits, key=lambda h: h.start):
        parts.append(text[pos : h.start])
        parts.append(h.token or "")
        pos = h.end
    parts.append(text[pos:])
    return "".join(parts)


def _embedded_json(text: str) -> Any | None:
    s = text.strip()
    if len(s) < 2 or s[0] not in "[{" or s[-1] not in "]}":
        return None
    try:
        v = json.loads(s)
    except ValueError:
        return None
    return v if isinstance(v, dict | list) else None


def _collect_tokens(
    value: Any, path: str, out: list[tuple[str, str]], texts: dict[tuple[str, str], None] | None = None
) -> None:
    if isinstance(value, str):
        tokens = [(m.group(0), path) for m in TOKEN_RE.finditer(value)]
        out.extend(tokens)
        if tokens and texts is not None:
            texts[(path, value)] = None
    elif isinstance(value, dict):
        for k, v in value.items():
            ks = str(k)
            out.extend((m.group(0), f"{path}.<key>") for m in TOKEN_RE.finditer(ks))
            _collect_tokens(v, f"{path}.{ks}", out, texts)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _collect_tokens(v, f"{path}[{i}]", out, texts)


def _plan(
    texts: dict[tuple[str, str], None], context_for: ContextFor, destination: str
) -> dict[tuple[str, str], Render]:
    """How each string holding a token is written, by (path, string); raw strings are left out."""
    renders: dict[tuple[str, str], Render] = {}
    for path, text in texts:
        context = context_for(path)
        if context == "json" and context_for(_parent(path)) == "json":
            continue  # a string inside a structured JSON argument: the structure is the encoding
        render = plan(text, context, Where(destination, path))
        if render is not None:
            renders[(path, text)] = render
    return renders


def _parent(path: str) -> str:
    """``$.body.to`` -> ``$.body``; ``$.a[2]`` -> ``$.a``; ``$`` -> ``$``."""
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else "$"


def _substitute(value: Any, values: dict[str, str], renders: dict[tuple[str, str], Render], path: str) -> Any:
    if isinstance(value, str):
        if not TOKEN_RE.search(value):
            return value
        render = renders.get((path, value))
        if render is not None:
            return render(values)
        embedded = _embedded_json(value)
        if embedded is not None:  # keep the document valid JSON whatever the real value holds
            indent = 2 if "\n" in value else None
            return json.dumps(substitute_json(embedded, values), ensure_ascii=False, indent=indent)
        return splice(value, values)
    if isinstance(value, dict):
        return {
            (_substitute(k, values, {}, "") if isinstance(k, str) else k): _substitute(
                v, values, renders, f"{path}.{k}"
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_substitute(v, values, renders, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


__all__ = ["Tokenizer"]
