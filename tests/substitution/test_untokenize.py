"""``Tokenizer.untokenize`` with contexts (real vault on real Postgres) and the policy's
``substitution`` section (schema, loader, lint, explain)."""

from __future__ import annotations

import os
import textwrap
import uuid
from pathlib import Path

import pytest

from veil.errors import PolicyError, SubstitutionRefused
from veil.policies.diff import diff_policies
from veil.policies.explain import explain_call
from veil.policies.lint import lint_file
from veil.policies.loader import load_policy
from veil.principal import Principal
from veil.tokenizer import DetectionSettings, Keyring, Scope, Tokenizer, TokenSettings


@pytest.fixture(scope="module")
def tokenizer(database_url: str):
    from veil import db

    engine = db.create_engine(database_url)
    yield Tokenizer(engine, Keyring.from_keys(os.urandom(32)), DetectionSettings(), TokenSettings())
    engine.dispose()


@pytest.fixture
def scope() -> Scope:
    return Scope(f"session:{uuid.uuid4().hex}")


def assign(tokenizer: Tokenizer, scope: Scope, *values: tuple[str, str]) -> list[str]:
    return [e.token for e in tokenizer.vault.assign(scope.key, list(values), "db")]


@pytest.mark.req("untokenize:all-or-nothing")
def test_a_refused_place_stops_the_call_before_the_vault_and_any_decision(tokenizer, scope) -> None:
    (name,) = assign(tokenizer, scope, ("Siobhan O'Connor", "PERSON"))
    decided: list[str] = []
    args = {
        "to": name,  # fine on its own (raw)
        "sql": "SELECT * FROM c WHERE name = [PERSON_999999]",  # unknown token, and outside a literal
    }
    with pytest.raises(SubstitutionRefused) as err:
        tokenizer.untokenize(args, scope, lambda ref, path: decided.append(path), destination="db__query")
    assert decided == []  # planned before any decision; the unknown token was not even looked up
    assert "db__query" in err.value.message and "argument 'sql'" in err.value.message
    assert err.value.token == "[PERSON_999999]" and err.value.argument == "sql"


@pytest.mark.req("untokenize:all-or-nothing")
def test_a_value_that_cannot_be_written_stops_every_argument(tokenizer, scope) -> None:
    ok, nul = assign(tokenizer, scope, ("jane@example.com", "EMAIL_ADDRESS"), ("bad\x00value", "PERSON"))
    with pytest.raises(SubstitutionRefused) as err:
        tokenizer.untokenize({"to": ok, "sql": f"SELECT '{nul}'"}, scope, lambda ref, path: None)
    assert "NUL" in err.value.message and "bad" not in err.value.message


@pytest.mark.req("untokenize:context")
def test_contexts_come_from_the_callback_and_default_by_name(tokenizer, scope) -> None:
    name, mail = assign(tokenizer, scope, ("Siobhan O'Connor", "PERSON"), ('a"b@example.com', "EMAIL_ADDRESS"))
    args = {
        "query": f"SELECT id FROM c WHERE name = '{name}'",  # default: sql
        "note": f"for {name}",  # default: raw
        "cmd": f"grep {name} file",  # shell, by the callback
        "body": f'{{"to": "{mail}"}}',  # json, by the callback
    }
    contexts = {"$.cmd": "shell", "$.body": "json"}
    seen: list[str] = []
    out = tokenizer.untokenize(
        args, scope, lambda ref, path: seen.append(path), lambda p: contexts.get(p) or default(p)
    ).value
    assert out["query"] == "SELECT id FROM c WHERE name = $veil$Siobhan O'Connor$veil$"
    assert out["note"] == "for Siobhan O'Connor"
    assert out["cmd"] == 'grep "Siobhan O\'Connor" file'
    assert out["body"] == '{"to": "a\\"b@example.com"}'
    assert sorted(seen) == ["$.body", "$.cmd", "$.note", "$.query"]


@pytest.mark.req("untokenize:context")
def test_strings_inside_a_structured_json_argument_are_values_not_documents(tokenizer, scope) -> None:
    """A rule ``args: [payload]`` covers ``payload.to``: inside the structure a string is a plain
    value (the structure is the encoding); a string that *is* the argument must be a document."""
    (mail,) = assign(tokenizer, scope, ('a"b@example.com', "EMAIL_ADDRESS"))
    json_payload = lambda p: "json" if p.startswith("$.payload") else "raw"  # noqa: E731
    out = tokenizer.untokenize({"payload": {"to": [mail]}}, scope, lambda r, p: None, json_payload).value
    assert out == {"payload": {"to": ['a"b@example.com']}}
    with pytest.raises(SubstitutionRefused, match="not a JSON document"):
        tokenizer.untokenize({"payload": f"to {mail}"}, scope, lambda r, p: None, json_payload)


def default(path: str) -> str:
    from veil.tokenizer.substitute import default_context

    return default_context(path)


# -- the policy section ------------------------------------------------------------------------------

POLICY = textwrap.dedent(
    """
    metadata:
      name: subst
    substitution:
      - id: search-is-text
        to: ["docs__search"]
        args: [query]
        substitute: raw
      - id: ops-shell
        to: ["ops__*"]
        args: [command, "steps[*].run"]
        substitute: shell
      - id: api-json
        to: ["api__post"]
        args: [body]
        substitute: json
    """
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


@pytest.mark.req("untokenize:context")
def test_the_policy_names_each_arguments_context_first_match_wins(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, POLICY))
    assert policy.substitute_context("docs", "search", "$.query") == ("raw", "substitution[0]:search-is-text")
    assert policy.substitute_context("ops", "run", "$.command") == ("shell", "substitution[1]:ops-shell")
    assert policy.substitute_context("ops", "run", "$.steps[2].run") == ("shell", "substitution[1]:ops-shell")
    assert policy.substitute_context("api", "post", "$.body") == ("json", "substitution[2]:api-json")
    assert policy.substitute_context("db", "execute_sql", "$.sql") == ("sql", "default:sql-name")
    assert policy.substitute_context("crm", "search", "$.query") == ("sql", "default:sql-name")
    assert policy.substitute_context("mailer", "send", "$.to") == ("raw", "default:raw")


@pytest.mark.req("untokenize:context")
def test_lint_and_load_check_the_section(tmp_path: Path) -> None:
    bad = POLICY + "  - id: typo\n    to: [x__y]\n    args: [a]\n    substitute: html\n"
    problems = lint_file(str(write(tmp_path, bad)))
    assert any("substitution[3].substitute must be one of: sql, json, shell, raw" in p.message for p in problems)
    with pytest.raises(PolicyError):
        load_policy(write(tmp_path, bad))
    shadowed = POLICY + ("  - id: ops-shell\n    to: [ops__run]\n    args: [command]\n    substitute: raw\n")
    messages = [p.message for p in lint_file(str(write(tmp_path, shadowed)))]
    assert any("rule id 'ops-shell' is already used by substitution[1]" in m for m in messages)
    assert any("substitution[3]:ops-shell can never match" in m for m in messages)


@pytest.mark.req("untokenize:context")
def test_explain_shows_the_context_and_the_refusal(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, POLICY))
    who = Principal(name="alice", roles=frozenset({"analyst"}))
    good = explain_call(
        policy, 'db__execute_sql {"sql": "SELECT 1 WHERE e = \'[EMAIL_ADDRESS_1]\'"}', who, frozenset({"db"})
    )
    assert "  written as sql (default:sql-name)" in good and "REFUSED" not in good
    bad = explain_call(
        policy, 'db__execute_sql {"sql": "SELECT 1 WHERE e = [EMAIL_ADDRESS_1]"}', who, frozenset({"db"})
    )
    assert "  => REFUSED: db__execute_sql: token [EMAIL_ADDRESS_1] in argument 'sql'" in bad
    raw = explain_call(policy, 'docs__search {"query": "[EMAIL_ADDRESS_1]"}', who, frozenset({"docs"}))
    assert "written as" not in raw


@pytest.mark.req("untokenize:context")
def test_diff_reports_substitution_changes(tmp_path: Path) -> None:
    old = load_policy(write(tmp_path, POLICY))
    changed = POLICY.replace("substitute: raw", "substitute: sql").replace("id: api-json", "id: api-body")
    new_path = tmp_path / "new.yaml"
    new_path.write_text(changed)
    lines = diff_policies(old, load_policy(new_path))
    assert (
        "substitution: rule 'search-is-text' changed (substitute): now write values as sql in arguments [query] "
        "of [docs__search] (was: write values as raw in arguments [query] of [docs__search])"
    ) in lines
    assert any(line.startswith("substitution: rule 'api-body' added at position 2") for line in lines)
    assert any(line.startswith("substitution: rule 'api-json' removed") for line in lines)
