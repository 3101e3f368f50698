"""The MCP conformance suite's server scenarios, against two upstreams directly and through Veil.

For each upstream (server-everything, and ``reference_server.py`` which has what the scenarios
call), one run of each (module fixture): the upstream on Streamable HTTP and the pinned suite
against it, then ``veil serve --http`` in front of the same server (its own tool names:
``prefix: ""``) and the suite against Veil. docs/conformance.md holds one table per upstream
(scenario, direct, via Veil, note); these tests keep it true:

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

from .suite import Scenario, everything_http, reference_http, run_suite, veil_http

DOC = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"
UPSTREAMS = {"server-everything": everything_http, "reference": reference_http}
_HEADING = re.compile(r"^### Upstream: `(?P<upstream>[a-z-]+)`")
_ROW = re.compile(r"^\| `(?P<scenario>[a-z0-9-]+)` \| (?P<direct>[^|]+) \| (?P<veil>[^|]+) \| (?P<note>[^|]*) \|$")


def documented() -> dict[str, dict[str, dict[str, str]]]:
    """The tables in docs/conformance.md: upstream -> scenario -> {direct, veil, note} (as written)."""
    tables: dict[str, dict[str, dict[str, str]]] = {}
    table: dict[str, dict[str, str]] | None = None
    for line in DOC.read_text().splitlines():
        if heading := _HEADING.match(line):
            table = tables.setdefault(heading["upstream"], {})
        elif (row := _ROW.match(line)) and table is not None:
            table[row["scenario"]] = {k: row[k].strip() for k in ("direct", "veil", "note")}
    return tables


def _passes(cell: str) -> bool:
    return cell.split()[0] == "pass"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, make_database) -> dict[str, dict[str, dict[str, Scenario]]]:
    """upstream -> {"direct": results, "veil": results}."""
    out: dict[str, dict[str, dict[str, Scenario]]] = {}
    for name, start in UPSTREAMS.items():
        base = tmp_path_factory.mktemp(f"conformance-{name}")
        config = base / "veil.yaml"
        with start(_free_port()) as upstream:
            direct = run_suite(upstream, base / "direct")
            config.write_text(
                yaml.safe_dump(
                    {
                        # Its own tool names, and binary content passed (withheld by default).
                        "upstreams": {"upstream": {"url": upstream, "prefix": "", "binary": "pass"}},
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
        out[name] = {"direct": direct, "veil": via_veil}
    return out


def _scenario_params() -> list:
    params = []
    for upstream, table in documented().items():
        for scenario, row in table.items():
            if not _passes(row["direct"]):
                continue
            marks = []
            if not _passes(row["veil"]):
                marks.append(pytest.mark.xfail(strict=True, reason=row["note"] or "not yet passing through Veil"))
            params.append(pytest.param(upstream, scenario, marks=marks, id=f"{upstream}:{scenario}"))
    return params


@pytest.mark.req("protocol:conformance")
def test_the_tables_list_every_scenario_and_the_direct_column_is_measured(runs) -> None:
    tables = documented()
    assert sorted(tables) == sorted(UPSTREAMS), "docs/conformance.md: one table per upstream"
    for upstream, table in tables.items():
        run = runs[upstream]
        assert sorted(table) == sorted(run["direct"]) == sorted(run["veil"]), f"rows vs scenarios run ({upstream})"
        measured = {name: s.cell() for name, s in run["direct"].items()}
        assert {name: row["direct"] for name, row in table.items()} == measured, upstream


@pytest.mark.req("protocol:conformance")
def test_no_row_claims_a_pass_through_veil_the_run_does_not_show(runs) -> None:
    wrong = {
        f"{upstream}:{name}": runs[upstream]["veil"][name].failures
        for upstream, table in documented().items()
        for name, row in table.items()
        if _passes(row["veil"]) and not runs[upstream]["veil"][name].ok
    }
    assert wrong == {}


@pytest.mark.req("protocol:conformance")
@pytest.mark.parametrize(("upstream", "scenario"), _scenario_params())
def test_veil_passes_what_the_upstream_passes_directly(runs, upstream: str, scenario: str) -> None:
    direct = runs[upstream]["direct"][scenario]
    assert direct.ok, f"{scenario} no longer passes directly against {upstream}: {direct.failures}"
    result = runs[upstream]["veil"][scenario]
    assert result.ok, f"{scenario} through Veil in front of {upstream}: {result.failures}"
