"""The escaping itself: every nasty value written into SQL, shell and JSON comes back exactly.

SQL literals are checked by real PostgreSQL (with ``standard_conforming_strings`` on and off), shell
words by a real ``/bin/sh``; refusals by message. No gateway here: ``test_dbhub.py`` is end to end.
"""

from __future__ import annotations

import json
import subprocess

import psycopg
import pytest

from veil.errors import SubstitutionRefused, TokenError
from veil.tokenizer.substitute import Where, default_context, plan, shell_escape, sql_literal

W = Where("db__execute_sql", "$.sql")

NASTY = [
    "O'Connor",
    "x' OR '1'='1",
    "'; DROP TABLE customers; --",
    "a\\' OR 1=1 --",
    "back\\slash\\",
    "\\x27",
    "$$ dollar $$ $tag$",
    "*/ OR 1=1 /*",
    "-- comment",
    'double "quotes"',
    "line\nbreak\r\ttab",
    "Zoë Ünïcødé 😀 漢字 \u2028",
    "%_?:{}[]",
    "$veil$ tag $veil1$",
    "ends with $veil",
    "",
    "plain",
]


@pytest.fixture(scope="module")
def pg(server_url: str):
    with psycopg.connect(server_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        yield conn


@pytest.mark.req("untokenize:sql-safe")
@pytest.mark.parametrize("value", NASTY)
@pytest.mark.parametrize("scs", ["on", "off"])
def test_a_value_written_into_a_literal_reads_back_exactly(pg, value: str, scs: str) -> None:
    render = plan("SELECT '[V_1]' AS v, 'tail' AS t", "sql", W)
    assert render is not None
    sql = render({"[V_1]": value})
    assert value in sql  # verbatim: an upstream that echoes the statement echoes a value the guard knows
    pg.execute(f"SET standard_conforming_strings = {scs}")
    try:
        row = pg.execute(sql).fetchone()
    finally:
        pg.execute("RESET standard_conforming_strings")
    assert row == (value, "tail")


@pytest.mark.req("untokenize:sql-safe")
@pytest.mark.parametrize(
    "sql",
    [
        'SELECT "a$b".v FROM (SELECT \'[V_1]\' AS v) AS "a$b"',  # $ in a quoted name is fine
        "SELECT $body$ it's $body$ AS x, '[V_1]' AS v",  # other dollar strings stay as written
        "SELECT text '[V_1]' AS v /* a comment */ -- and another",
        "SELECT v FROM (VALUES ('[V_1]')) AS t(v); SELECT '[V_1]' AS v",
    ],
)
def test_statements_around_the_literal_keep_working(pg, sql: str) -> None:
    render = plan(sql, "sql", W)
    assert render is not None
    with pg.cursor() as cur:
        cur.execute(render({"[V_1]": "O'Connor $veil$ \\ ;"}))
        while True:
            row = cur.fetchone()
            assert row is not None and row[-1] == "O'Connor $veil$ \\ ;"
            if not cur.nextset():
                break


@pytest.mark.req("untokenize:sql-safe")
def test_the_agents_part_of_the_literal_keeps_its_meaning(pg) -> None:
    render = plan("SELECT 'it''s [P_1] and [P_2]!' AS v", "sql", W)
    assert render is not None
    sql = render({"[P_1]": "O'Connor", "[P_2]": "a\\b"})
    assert pg.execute(sql).fetchone() == ("it's O'Connor and a\\b!",)


@pytest.mark.req("untokenize:sql-safe")
def test_harmless_values_keep_the_literal_as_written() -> None:
    render = plan("SELECT * FROM c WHERE email = '[EMAIL_ADDRESS_1]' AND name LIKE '%[PERSON_1]%'", "sql", W)
    assert render is not None
    out = render({"[EMAIL_ADDRESS_1]": "jane.doe@example.com", "[PERSON_1]": "Zoë Smith"})
    assert out == "SELECT * FROM c WHERE email = 'jane.doe@example.com' AND name LIKE '%Zoë Smith%'"


@pytest.mark.req("untokenize:sql-safe")
def test_a_value_that_looks_like_a_token_is_not_substituted_again() -> None:
    render = plan("SELECT '[A_1]', '[B_1]'", "sql", W)
    assert render is not None
    assert render({"[A_1]": "[B_1]", "[B_1]": "b"}) == "SELECT '[B_1]', 'b'"


@pytest.mark.req("untokenize:sql-safe")
def test_nul_cannot_be_written_and_the_message_does_not_carry_the_value() -> None:
    with pytest.raises(ValueError):
        sql_literal(["a", "\x00"])
    render = plan("SELECT '[S_1]'", "sql", W)
    assert render is not None
    with pytest.raises(SubstitutionRefused) as err:
        render({"[S_1]": "secret\x00value"})
    assert "secret" not in err.value.message and "[S_1]" in err.value.message


REFUSED_SQL = [
    ("SELECT * FROM c WHERE email = [E_1]", "outside any string literal", "WHERE email = '[E_1]'"),
    ("SELECT * FROM c WHERE email = '[X_1]' OR id = [E_1]", "outside any string literal", "'[E_1]'"),
    ('SELECT "[E_1]" FROM c', "identifier", "'[E_1]'"),
    ("SELECT 1 -- [E_1]", "comment", "comment"),
    ("SELECT 1 /* /* nested */ '[E_1]' */", "comment", "comment"),
    ("SELECT $$[E_1]$$", "dollar-quoted", "standard literal"),
    ("SELECT $t$ '[E_1]' $t$", "dollar-quoted", "standard literal"),
    ("SELECT E'[E_1]'", "E'...' string", "standard literal"),
    ("SELECT U&'[E_1]'", "U&'...' string", "standard literal"),
    ("SELECT 'a'\n'[E_1]'", "continues over a line break", "one piece"),
    ("SELECT 'a\\', '[E_1]'", "backslash", "without backslashes"),
    ("SELECT E'\\'', '[E_1]'", "backslash", "without backslashes"),
    ("SELECT '[E_1]", "does not lex", "Fix the statement"),
    ("SELECT N'[E_1]'", "shape", "plain '...' literal"),
    ("SELECT a$b$, '[E_1]'", "holds a $", "without $ in names"),
    ("SELECT $é$ x $é$, '[E_1]'", "non-ASCII tag", "ASCII tag"),
]


@pytest.mark.req("untokenize:sql-refuse")
@pytest.mark.parametrize(("sql", "why", "fix"), REFUSED_SQL)
def test_a_token_where_no_value_can_be_written_safely_is_refused(sql: str, why: str, fix: str) -> None:
    with pytest.raises(SubstitutionRefused) as err:
        render = plan(sql, "sql", W)
        assert render is not None
        render({"[E_1]": "O'Connor", "[X_1]": "x"})
    msg = err.value.message
    assert isinstance(err.value, TokenError)  # audited as a denied call by the pipeline
    assert why in msg and fix in msg
    assert "db__execute_sql" in msg and "argument 'sql'" in msg and "[E_1]" in msg
    assert "Connor" not in msg


@pytest.mark.req("untokenize:context")
def test_default_contexts_by_argument_name() -> None:
    assert default_context("$.sql") == "sql"
    assert default_context("$.query") == "sql"
    assert default_context("$.statement") == "sql"
    assert default_context("$.batch.sql[2]") == "sql"
    assert default_context("$.to") == "raw"
    assert default_context("$.sqlite_path") == "raw"
    assert default_context("$") == "raw"
    with pytest.raises(ValueError, match="unknown substitution context"):
        plan("[A_1]", "yaml", W)
    assert plan("[A_1]", "raw", W) is None


# -- shell ---------------------------------------------------------------------------------------

SH = Where("ops__run", "$.command")
SHELL_VALUES = [
    "O'Connor",
    "a b  c",
    "$(touch /tmp/pwned)",
    "`id`",
    '"; echo hacked; "',
    "back\\slash",
    "*",
    "~root",
    "line\nbreak",
    "Zoë 😀",
    "it's $HOME",
    "",
]


def _sh_words(command: str) -> list[str]:
    out = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.split("\0")[:-1]


@pytest.mark.req("untokenize:shell-json")
@pytest.mark.parametrize("value", SHELL_VALUES)
@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("printf '%s\\0' [V_1]", "{v}"),
        ("printf '%s\\0' --name=[V_1]", "--name={v}"),
        ("printf '%s\\0' \"hello [V_1]!\"", "hello {v}!"),
        ("printf '%s\\0' 'single [V_1] quoted'", "single {v} quoted"),
    ],
)
def test_a_shell_value_is_one_word_that_reads_back_exactly(value: str, template: str, expected: str) -> None:
    render = plan(template, "shell", SH)
    assert render is not None
    assert _sh_words(render({"[V_1]": value})) == [expected.format(v=value)]


@pytest.mark.req("untokenize:shell-json")
@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("echo $(cat [V_1])", "command substitution"),
        ("echo `cat [V_1]`", "backticks"),
        ("echo ${X:-[V_1]}", "${...}"),
        ("cat <<EOF\n[V_1]\nEOF", "here-document"),
        ("echo \\[V_1]", "backslash"),
        ("echo ok # [V_1]", "comment"),
        ("echo $'[V_1]'", "$'...'"),
        ("echo $[V_1]", "a $ stands"),
        ('echo "$[V_1]"', "a $ stands"),
        ("echo '[V_1]", "ends inside a quote"),
        ('bash -c "grep [V_1] f"', "another shell (bash)"),
        ("ssh host grep [V_1] f", "another shell (ssh)"),
        ("/bin/sh -c 'echo [V_1]'", "another shell (sh)"),
        ("x=1; eval echo [V_1]", "another shell (eval)"),
    ],
)
def test_a_shell_token_where_quoting_cannot_be_checked_is_refused(command: str, why: str) -> None:
    with pytest.raises(SubstitutionRefused) as err:
        plan(command, "shell", SH)
    assert why in err.value.message and "ops__run" in err.value.message and "[V_1]" in err.value.message


@pytest.mark.req("untokenize:shell-json")
@pytest.mark.parametrize("template", ["rm [V_1]", "rm '[V_1]'", 'rm "[V_1]"', "ls; rm [V_1]"])
def test_a_shell_value_that_would_be_an_option_is_refused(template: str) -> None:
    render = plan(template, "shell", SH)
    assert render is not None
    assert render({"[V_1]": "plain-file"}) == template.replace("[V_1]", "plain-file")
    with pytest.raises(SubstitutionRefused) as err:
        render({"[V_1]": "-rf"})
    assert "read it as an option" in err.value.message and "-rf" not in err.value.message


@pytest.mark.req("untokenize:shell-json")
@pytest.mark.parametrize(
    ("template", "expected"), [("printf '%s\\0' -- [V_1]", "-n"), ("printf '%s\\0' x=[V_1]", "x=-n")]
)
def test_a_dash_value_after_double_dash_or_inside_a_word_is_an_operand(template: str, expected: str) -> None:
    render = plan(template, "shell", SH)
    assert render is not None
    assert _sh_words(render({"[V_1]": "-n"}))[-1] == expected


@pytest.mark.req("untokenize:shell-json")
def test_shell_escape_modes() -> None:
    assert shell_escape("it's", "u") == '"it\'s"'
    assert shell_escape("a b", "u") == "'a b'"
    assert shell_escape("it's $x", "u") == "'it'\"'\"'s $x'"
    assert shell_escape("it's", "s") == "'\"it's\"'"
    assert shell_escape("it's $x", "s") == "it'\\''s $x"
    assert shell_escape('$a`b\\c"d', "d") == '\\$a\\`b\\\\c\\"d'
    with pytest.raises(ValueError):
        shell_escape("x", "c")


# -- JSON ----------------------------------------------------------------------------------------

JW = Where("api__post", "$.body")


@pytest.mark.req("untokenize:shell-json")
@pytest.mark.parametrize("value", ['a "quoted" \\ value', "line\nbreak", "Zoë 😀", '"}, "admin": true, "x": "'])
def test_a_json_value_is_a_json_string(value: str) -> None:
    render = plan('{"email": "[E_1]", "note": "hi [E_1]", "[E_1]": 1, "n": [1, 2.5]}', "json", JW)
    assert render is not None
    doc = json.loads(render({"[E_1]": value}))
    assert doc == {"email": value, "note": f"hi {value}", value: 1, "n": [1, 2.5]}


@pytest.mark.req("untokenize:shell-json")
def test_a_json_token_outside_a_string_is_refused() -> None:
    with pytest.raises(SubstitutionRefused) as err:
        plan('{"id": [E_1]}', "json", JW)
    assert "not a JSON document" in err.value.message and '{"email": "[E_1]"}' in err.value.message
