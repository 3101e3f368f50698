"""The MCP conformance suite's server scenarios, against server-everything directly and through Veil.

One run of each (module fixture): server-everything on Streamable HTTP, the pinned suite against
it, then ``veil serve --http`` in front of the same server (its own tool names: ``prefix: ""``)
and the suite against Veil. docs/conformance.md holds the table (scenario, direct, via Veil,
note); these tests keep it true:

* the direct column is exactly what the upstream scores (it is pinned, so this is stable);
* every scenario the upstream passes directly passes through Veil, except the rows the table
  marks as not yet passing: those are strict xfails, so fixing one fails until the row says so;
* no row claims a pass through Veil that the run does not show.
"""

from __future__ import annotations

import base64
import os
import re
import socket
from pathlib import Path

import pytest
import yaml

from .suite import Scenario, everything_http, run_suite, veil_http

DOC = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"
_ROW = re.compile(
    r"^\| `(?P<scenario>[a-z0-9-]+)` \| (?P<direct>[^|]+) \| (?P<veil>[^|]+) \| (?P<note>[^|]*) \|$", re.M
)


def documented() -> dict[str, dict[str, str]]:
    """The table in docs/conformance.md: scenario -> {direct, veil, note} (cells as written)."""
    rows = _ROW.finditer(DOC.read_text())
    return {m["scenario"]: {k: m[k].strip() for k in ("direct", "veil", "note")} for m in rows}


def _passes(cell: str) -> bool:
    return cell.split()[0] == "pass"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, make_database) -> dict[str, dict[str, Scenario]]:
    base = tmp_path_factory.mktemp("conformance")
    config = base / "veil.yaml"
    with everything_http(_free_port()) as upstream:
        direct = run_suite(upstream, base / "direct")
        config.write_text(
            yaml.safe_dump(
                {
                    "upstreams": {"everything": {"url": upstream, "prefix": ""}},
                    "database_url": make_database(),
                    "data_dir": str(base / "data"),
                    "expose": "direct",
                    "auth": {"required": False},  # the suite has no credentials; loopback only
                }
            )
        )
        env = {"VEIL_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
        with veil_http(config, _free_port(), env) as url:
            via_veil = run_suite(url, base / "veil")
    return {"direct": direct, "veil": via_veil}


def _scenario_params() -> list:
    params = []
    for scenario, row in documented().items():
        if not _passes(row["direct"]):
            continue
        marks = []
        if not _passes(row["veil"]):
            marks.append(pytest.mark.xfail(strict=True, reason=row["note"] or "not yet passing through Veil"))
        params.append(pytest.param(scenario, marks=marks, id=scenario))
    return params


@pytest.mark.req("protocol:conformance")
def test_the_table_lists_every_scenario_and_the_direct_column_is_measured(runs) -> None:
    table = documented()
    assert sorted(table) == sorted(runs["direct"]) == sorted(runs["veil"]), "docs/conformance.md rows vs scenarios run"
    measured = {name: s.cell() for name, s in runs["direct"].items()}
    assert {name: row["direct"] for name, row in table.items()} == measured


@pytest.mark.req("protocol:conformance")
def test_no_row_claims_a_pass_through_veil_the_run_does_not_show(runs) -> None:
    wrong = {
        name: runs["veil"][name].failures
        for name, row in documented().items()
        if _passes(row["veil"]) and not runs["veil"][name].ok
    }
    assert wrong == {}


@pytest.mark.req("protocol:conformance")
@pytest.mark.parametrize("scenario", _scenario_params())
def test_veil_passes_what_the_upstream_passes_directly(runs, scenario: str) -> None:
    assert runs["direct"][scenario].ok, f"{scenario} no longer passes directly: {runs['direct'][scenario].failures}"
    result = runs["veil"][scenario]
    assert result.ok, f"{scenario} through Veil: {result.failures}"
