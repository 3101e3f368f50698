"""docs/threat-model.md stays true: every test, file and requirement id it names exists, and the
corpus cases it says are not met are exactly the pending ones."""

from __future__ import annotations

import re
from pathlib import Path

from security.corpus import CASES, PENDING

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "threat-model.md").read_text()


def test_named_test_files_and_functions_exist() -> None:
    named = set(re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", DOC))
    assert named, "the threat model names no tests"
    for path, function in named:
        source = ROOT / path
        assert source.is_file(), f"docs/threat-model.md names {path}, which does not exist"
        if function:
            assert re.search(rf"def {function}\b", source.read_text()), f"{path} has no {function}"
    for folder in re.findall(r"`(tests/\w+/)`", DOC):
        assert (ROOT / folder).is_dir(), f"docs/threat-model.md names {folder}, which does not exist"


def test_named_requirement_ids_are_documented() -> None:
    documented = set(re.findall(r"^\| `([a-z0-9:_-]+)` \|", (ROOT / "docs/requirements.md").read_text(), re.M))
    named = {i for i in re.findall(r"`([a-z]+:[a-z0-9_-]+)`", DOC) if not i.startswith("default:")}  # rule names
    assert named and named <= documented, sorted(named - documented)


def test_case_prefixes_named_by_the_doc_exist_in_the_corpus() -> None:
    prefixes = set(re.findall(r"`(echo|blind|listing|fp|dos|sandbox|oracle|audit)-\*`", DOC))
    assert prefixes, "the threat model names no corpus case groups"
    for prefix in prefixes:
        assert any(c.id.startswith(prefix + "-") for c in CASES), prefix


def test_the_not_met_list_is_the_pending_list() -> None:
    section = DOC.split("### Not met yet", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`([a-z0-9-]+)`", section))
    assert listed == set(PENDING), (
        f"docs/threat-model.md 'Not met yet' differs from corpus.PENDING: "
        f"missing {sorted(set(PENDING) - listed)}, stale {sorted(listed - set(PENDING))}"
    )
