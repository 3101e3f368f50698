"""Safe substitution: a real value is written into an argument the way the place it stands needs.

Untokenisation used to splice values verbatim, so a stored e-mail ``x' OR '1'='1`` turned an
agent's ``WHERE email = '[EMAIL_ADDRESS_1]'`` into a query matching every row (second-order SQL
injection). Each argument now has a *context* (declared in the policy's ``substitution`` section,
with defaults by argument name) that says how a value is written into it:

``sql``
    The string is PostgreSQL, lexed by PostgreSQL's own scanner (``pglast``, libpg_query). A
    token must stand inside a standard string literal ``'...'``; anywhere else (outside any
    literal, in an identifier, a comment, an ``E''``/``U&''``/dollar-quoted string) it is refused
    with a message saying how to write it. A literal holding a token stays ``'...'`` when no value
    holds a quote or backslash, and is otherwise rewritten whole as a dollar-quoted string with a
    tag its content does not contain: literal under every setting, and the value stays verbatim,
    so an upstream that echoes the statement (dbhub does) echoes a value the return path knows.
    Refused too, because PostgreSQL with ``standard_conforming_strings = off`` or a client-side
    statement splitter (dbhub splits on ``;`` itself) would read literal boundaries differently: a
    string literal with a backslash, a ``$`` in a name, a dollar-quote tag that is not ASCII. The
    result is lexed again and must keep the agent's statement's shape.
``json``
    A string argument must be one JSON document; values are written as JSON strings (escaped by
    the encoder). Structured arguments are JSON already.
``shell``
    A shell command line. The value is written as one word, quoted so that it stays verbatim
    where it can (``'v'``, or ``"v"`` for a value with a single quote; inside ``'...'`` a value
    with a quote is written ``'"v"'``), else with ``shlex.quote`` / backslash escapes. Command
    substitution, backticks, ``${...}``, here-documents, ``$'...'``, comments, a backslash or
    ``$`` right before the token, and a second shell (``bash -c``, ``ssh``, ``eval``) are refused:
    quoting cannot be reasoned about there; so is a value that would be read as an option
    (``-rf`` at the start of a word, unless after ``--``).
``raw``
    Verbatim, as before (a string that is itself a JSON document stays valid JSON).
``uri``
    Not a policy choice: the runner uses it for a resource URI in which the agent percent-encoded
    its tokens (``%5BEMAIL_ADDRESS_1%5D``, as RFC 6570 expansion writes them). Each value is
    percent-encoded (every reserved character), so the upstream decodes exactly the value.

Every refusal is a ``SubstitutionRefused`` naming tool, argument and token, never the value, and
happens before anything is sent: ``plan`` runs before the vault is read and before any flow
decision, ``render`` after every decision and before the call leaves, for all strings or none.
"""

from __future__ import annotations

import bisect
import json
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from veil.errors import SubstitutionRefused
from veil.tokenizer.tokens import TOKEN_RE

Context = Literal["sql", "json", "shell", "raw"]
CONTEXTS: tuple[str, ...] = ("sql", "json", "shell", "raw")
#: Arguments with these names are SQL unless the policy says otherwise.
DEFAULT_SQL_NAMES = frozenset({"sql", "query", "statement"})

ContextFor = Callable[[str], str]
Render = Callable[[Mapping[str, str]], str]

_LAST_KEY = re.compile(r"([^.\[\]]+)(?:\[\d+\])*$")


def default_context(path: str) -> Context:
    """The context of an argument no policy rule names: ``sql`` for ``sql``/``query``/``statement``
    (the argument's own name, at any depth), ``raw`` for everything else."""
    m = _LAST_KEY.search(path.lstrip("$").lstrip("."))
    return "sql" if m and m.group(1) in DEFAULT_SQL_NAMES else "raw"


@dataclass(frozen=True)
class Where:
    """Names for messages: the destination tool and the argument (never the value)."""

    tool: str
    path: str

    @property
    def arg(self) -> str:
        return self.path[2:] if self.path.startswith("$.") else self.path.lstrip("$") or "(arguments)"

    def refuse(self, token: str, why: str, fix: str) -> SubstitutionRefused:
        return SubstitutionRefused(
            f"{self.tool}: token {token} in argument '{self.arg}' cannot be written safely: {why}. {fix} "
            "Nothing was sent upstream.",
            token=token,
            argument=self.arg,
        )


def plan(text: str, context: str, where: Where) -> Render | None:
    """Check where every token in ``text`` stands; return how to write the values in (or None for
    ``raw``, which the caller splices as before). Raises ``SubstitutionRefused``; reads no value."""
    if context == "sql":
        return _plan_sql(text, where)
    if context == "shell":
        return _plan_shell(text, where)
    if context == "json":
        return _plan_json(text, where)
    if context == "raw":
        return None
    if context == "uri":
        return lambda values: TOKEN_RE.sub(lambda m: quote(values[m.group(0)], safe=""), text)
    raise ValueError(f"unknown substitution context {context!r} (known: {', '.join(CONTEXTS)})")


def splice(text: str, values: Mapping[str, str]) -> str:
    """Raw substitution: every token replaced by its value, in one pass (a value that looks like a
    token is not substituted again)."""
    return TOKEN_RE.sub(lambda m: values[m.group(0)], text)


# -- SQL --------------------------------------------------------------------------------------------

#: Characters a value cannot carry into a standard literal as they are: the quote, and the
#: backslash (an escape when the server's standard_conforming_strings is off).
_NOT_PLAIN = re.compile(r"['\\]")
#: Dollar-quote tags every statement splitter agrees on (PostgreSQL also takes non-ASCII letters).
_ASCII_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")
_STANDARD_LITERAL = re.compile(r"'((?:[^']|'')*)'", re.S)
_HOW_SQL = "Put the token inside a quoted string literal, e.g. WHERE email = '{token}'."


def _scan(sql: str) -> list[Any] | None:
    from pglast import parser  # imported on first SQL argument: lint and the CLI never need it

    try:
        return list(parser.scan(sql))
    except parser.ParseError:
        return None


def sql_literal(parts: Sequence[str]) -> str:
    """A PostgreSQL string literal holding the agent's text with the values written in.

    ``parts`` alternate the agent's own text, exactly as written between the quotes (doubled
    quotes, no backslash: checked by the caller), and values (odd items). When no value holds a
    quote or a backslash the literal stays ``'...'`` with the values as they are. Otherwise it
    becomes a dollar-quoted string ``$veil$...$veil$`` (a tag that the content does not contain):
    its content is literal, so no quote or backslash needs escaping under any setting, and the
    value stays verbatim, so when an upstream echoes the statement the return path finds the value
    it knows and tokenises it again (an escaped form such as ``O''Connor`` it would not recognise).
    Raises ValueError for NUL, which PostgreSQL text cannot hold."""
    values = parts[1::2]
    if any("\x00" in v for v in values):
        raise ValueError("NUL")
    if not any(_NOT_PLAIN.search(v) for v in values):
        return "'" + "".join(parts) + "'"
    content = "".join(p if i % 2 else p.replace("''", "'") for i, p in enumerate(parts))
    n = 0
    while True:
        delim = f"$veil{n or ''}$"
        if (content + delim).find(delim) == len(content):
            return delim + content + delim
        n += 1


@dataclass(frozen=True)
class _Literal:
    start: int  # position of the literal's first character in the text
    end: int  # one past its last character
    parts: tuple[str, ...]  # the text between the quotes as written, split so that odd items are tokens


def _plan_sql(text: str, where: Where) -> Render:
    matches = list(TOKEN_RE.finditer(text))
    first = matches[0].group(0)
    lexemes = _scan(text)
    if lexemes is None:
        raise where.refuse(
            first,
            "the argument is SQL and does not lex as PostgreSQL (an unterminated string, identifier or comment?)",
            "Fix the statement.",
        )
    literals: dict[int, list[re.Match[str]]] = {}
    starts = [x.start for x in lexemes]
    by_start = {x.start: x for x in lexemes}
    for m in matches:
        token = m.group(0)
        i = bisect.bisect_right(starts, m.start()) - 1  # the lexeme the token starts in, if any
        lex = lexemes[i] if i >= 0 and m.end() <= lexemes[i].end + 1 else None
        if lex is None or lex.name not in {"SCONST", "USCONST", "SQL_COMMENT", "C_COMMENT", "IDENT"}:
            raise where.refuse(token, "it stands outside any string literal", _HOW_SQL.format(token=token))
        raw = text[lex.start : lex.end + 1]
        if lex.name in {"SQL_COMMENT", "C_COMMENT"}:
            raise where.refuse(token, "it stands in a comment", "Remove it from the comment.")
        if lex.name == "IDENT":
            raise where.refuse(
                token, "it stands in an identifier (a name in double quotes)", _HOW_SQL.format(token=token)
            )
        if not raw.startswith("'"):
            prefix = raw.split("'")[0].upper()
            kind = (
                "a dollar-quoted string"
                if raw.startswith("$")
                else f"{'an' if prefix == 'E' else 'a'} {prefix}'...' string"
            )
            raise where.refuse(
                token,
                f"it stands in {kind}",
                f"Write it in a standard literal '{token}'; Veil quotes the value itself when it needs to.",
            )
        if not _STANDARD_LITERAL.fullmatch(raw):
            raise where.refuse(
                token,
                "its string literal continues over a line break ('a'<newline>'b')",
                "Write the literal in one piece.",
            )
        literals.setdefault(lex.start, []).append(m)
    for lex in lexemes:
        raw = text[lex.start : lex.end + 1]
        if lex.name == "SCONST" and raw.startswith("$") and not _ASCII_TAG.match(raw):
            raise where.refuse(
                first,
                "a dollar-quoted string in this statement has a non-ASCII tag, which some statement splitters "
                "do not read as PostgreSQL does",
                "Use an ASCII tag such as $body$.",
            )
        quoted = lex.name == "IDENT" and raw.startswith('"')  # splitters read "..." as PostgreSQL does
        if lex.name not in {"SCONST", "PARAM", "SQL_COMMENT", "C_COMMENT"} and not quoted and "$" in raw:
            raise where.refuse(
                first,
                "a name in this statement holds a $, which some statement splitters read as a dollar quote",
                "Write the statement without $ in names.",
            )
        if lex.name == "SCONST" and raw[:1] in {"'", "E", "e"} and "\\" in raw:
            raise where.refuse(
                first,
                "a string literal in this statement holds a backslash, which PostgreSQL reads differently "
                "when standard_conforming_strings is off and some statement splitters misread",
                "Write the statement without backslashes in its string literals.",
            )
    plans: list[_Literal] = []
    for start, ms in sorted(literals.items()):
        lex = by_start[start]
        parts: list[str] = []
        pos = start + 1
        for m in ms:
            parts += [text[pos : m.start()], m.group(0)]
            pos = m.end()
        parts.append(text[pos : lex.end])
        plans.append(_Literal(start, lex.end + 1, tuple(parts)))
    shape = [x.name for x in lexemes]

    def render(values: Mapping[str, str]) -> str:
        out: list[str] = []
        pos = 0
        for lit in plans:
            try:
                encoded = sql_literal([values[p] if i % 2 else p for i, p in enumerate(lit.parts)])
            except ValueError:
                token = next(p for i, p in enumerate(lit.parts) if i % 2 and "\x00" in values[p])
                raise where.refuse(
                    token,
                    "its value holds a NUL character, which PostgreSQL text cannot carry",
                    "It cannot be used in SQL.",
                ) from None
            out += [text[pos : lit.start], encoded]
            pos = lit.end
        out.append(text[pos:])
        result = "".join(out)
        again = _scan(result)
        if again is None or [x.name for x in again] != shape:  # belt and braces: same statement shape
            raise where.refuse(
                first,
                "the statement would not keep its shape with the value written in "
                "(is the literal glued to a name, as in N'...'?)",
                "Write the token in a plain '...' literal with a space before it.",
            )
        return result

    return render


# -- shell ------------------------------------------------------------------------------------------

_SHELL_FORBIDDEN = (("$(", "command substitution $(...)"), ("`", "backticks"), ("${", "${...} expansion"))
#: Programs that hand their arguments to another shell as text (``bash -c "..."``, ``ssh host
#: cmd``, ``eval``): one layer of quoting is removed by the first shell and the value would be
#: code for the second. A heuristic list; the refusal names the program.
_REEVALUATORS = re.compile(
    r"(?:^|[\s;&|(/])(eval|sh|bash|dash|zsh|ksh|mksh|fish|csh|tcsh|ssh|su|watch|parallel|script|busybox)(?=\s|$)"
)


def _shell_states(text: str) -> tuple[list[str], str]:
    """The quoting state of each character and the state after the last one: ``u`` unquoted,
    ``s`` in '...', ``d`` in "...", ``e`` escaped by a backslash, ``c`` in a comment, ``a`` in
    $'...' (ANSI-C quoting). A quote character carries the state it opens or closes from."""
    states: list[str] = []
    state = "u"
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if state in {"u", "d"} and c == "\\":
            states += [state, "e"]
            i += 2
            continue
        if state == "a" and c == "\\":
            states += ["a", "a"]
            i += 2
            continue
        states.append(state)
        if state == "u":
            if c == "'":
                state = "s"
            elif c == '"':
                state = "d"
            elif c == "$" and text[i + 1 : i + 2] == "'":
                states.append("a")
                state = "a"
                i += 1
            elif c == "#" and (i == 0 or text[i - 1] in " \t\n;&|()<>"):
                state = "c"
        elif (state, c) in {("c", "\n"), ("s", "'"), ("d", '"'), ("a", "'")}:
            state = "u"
        i += 1
    if len(states) > n:  # a trailing backslash
        return states[:n], "e"
    return states, state


def _plan_shell(text: str, where: Where) -> Render:
    matches = list(TOKEN_RE.finditer(text))
    first = matches[0].group(0)
    for needle, name in (*_SHELL_FORBIDDEN, ("<<", "a here-document")):
        if needle in text:
            raise where.refuse(
                first,
                f"the argument is a shell command and uses {name}, where quoting cannot be checked",
                "Write the command without it.",
            )
    nested = _REEVALUATORS.search(text)
    if nested:
        raise where.refuse(
            first,
            f"the command hands text to another shell ({nested.group(1)}), which would read the value as code",
            "Run the program directly instead of through a second shell.",
        )
    states, final = _shell_states(text)
    if final not in {"u", "c"}:
        raise where.refuse(first, "the shell command ends inside a quote or after a backslash", "Close the quote.")
    modes: list[str] = []
    for m in matches:
        state = states[m.start()]
        token = m.group(0)
        if state == "e":
            raise where.refuse(token, "a backslash stands right before it", "Remove the backslash.")
        if state == "c":
            raise where.refuse(token, "it stands in a shell comment", "Remove it from the comment.")
        if state == "a":
            raise where.refuse(token, "it stands in a $'...' string", f"Write it unquoted: {token}.")
        if state in {"u", "d"} and text[m.start() - 1 : m.start()] == "$":
            raise where.refuse(token, "a $ stands right before it", "Remove the $ or put a space after it.")
        modes.append(state)
    # A value at the start of a word that begins with "-" would be read as an option (rm -rf,
    # git --upload-pack=...), which quoting cannot prevent; after a "--" word it is an operand.
    word_start = [
        _starts_word(text, m.start(), states) and not re.search(r"(?:^|\s)--\s", text[: m.start()]) for m in matches
    ]

    def render(values: Mapping[str, str]) -> str:
        out: list[str] = []
        pos = 0
        for m, mode, starts in zip(matches, modes, word_start, strict=True):
            value = values[m.group(0)]
            if "\x00" in value:
                raise where.refuse(
                    m.group(0),
                    "its value holds a NUL character, which no command line can carry",
                    "It cannot be used in a command.",
                )
            if starts and value.startswith("-"):
                raise where.refuse(
                    m.group(0),
                    "its value begins with '-', so the command would read it as an option",
                    f"Put '--' before it (grep -- {m.group(0)} file) or join it to an option (--name={m.group(0)}).",
                )
            out += [text[pos : m.start()], shell_escape(value, mode)]
            pos = m.end()
        out.append(text[pos:])
        return "".join(out)

    return render


def _starts_word(text: str, at: int, states: list[str]) -> bool:
    """Whether the character at ``at`` begins a shell word (directly or right after its opening quote)."""
    if states[at] in {"s", "d"}:
        if at == 0 or text[at - 1] not in "'\"" or states[at - 1] != "u":
            return False
        at -= 1
    return at == 0 or text[at - 1] in " \t\n;&|("


_DQ_SPECIAL = re.compile(r'[$`\\"!]')


def shell_escape(value: str, mode: str) -> str:
    """``value`` written where the quoting state is ``mode`` (``u``, ``s`` or ``d``), verbatim
    between quotes when possible (an upstream that echoes the command then echoes the value the
    return path knows), escaped only when the value holds both kinds of special characters."""
    if mode == "u":
        if "'" in value and not _DQ_SPECIAL.search(value):
            return f'"{value}"'
        return shlex.quote(value)
    if mode == "s":
        if "'" in value and not _DQ_SPECIAL.search(value):
            return f"'\"{value}\"'"
        return value.replace("'", "'\\''")
    if mode == "d":
        return re.sub(r'([$`\\"])', r"\\\1", value)
    raise ValueError(f"no shell escaping for state {mode!r}")


# -- JSON -------------------------------------------------------------------------------------------


def _plan_json(text: str, where: Where) -> Render:
    try:
        doc = json.loads(text)
    except ValueError:
        token = TOKEN_RE.search(text).group(0)  # type: ignore[union-attr]
        raise where.refuse(
            token,
            "the argument is declared JSON and is not a JSON document (a token outside a JSON string?)",
            f'Write the token inside a JSON string, e.g. {{"email": "{token}"}}.',
        ) from None
    indent = 2 if "\n" in text.strip() else None

    def render(values: Mapping[str, str]) -> str:
        return json.dumps(substitute_json(doc, values), ensure_ascii=False, indent=indent)

    return render


def substitute_json(value: Any, values: Mapping[str, str]) -> Any:
    """Values spliced into every string (and key) of a parsed JSON value; the encoder escapes them."""
    if isinstance(value, str):
        return splice(value, values) if TOKEN_RE.search(value) else value
    if isinstance(value, dict):
        return {substitute_json(k, values): substitute_json(v, values) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [substitute_json(v, values) for v in value]
    return value


__all__ = [
    "CONTEXTS",
    "DEFAULT_SQL_NAMES",
    "Context",
    "ContextFor",
    "Render",
    "Where",
    "default_context",
    "plan",
    "shell_escape",
    "splice",
    "sql_literal",
    "substitute_json",
]
