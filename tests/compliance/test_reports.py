"""Reports carry exactly the numbers of the events they summarise, in every format."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from veil.audit import events as ev
from veil.cli import main

from .conftest import Seeded

pytestmark = pytest.mark.req("compliance:reports")


def run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stderr


def report_json(seeded: Seeded, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "r.json"
    run("report", "--database-url", seeded.url, "--from", seeded.start, "--to", seeded.end, "--out", str(out), *extra)
    return json.loads(out.read_text())


def expected_summary(events: list[ev.AuditEvent]) -> dict[str, int]:
    """The same numbers, counted from the events we wrote (independently of the report's SQL)."""
    return {
        "events": len(events),
        "sessions": len({e.session_id for e in events if e.session_id}),
        "principals": len({e.principal for e in events if e.principal and e.principal != "veil"}),
        "tool_calls": sum(e.kind == ev.TOOL_CALL for e in events),
        "executions": sum(e.kind == ev.CODE_EXECUTE for e in events),
        "denials": sum(e.outcome == ev.DENIED for e in events),
        "errors": sum(e.outcome not in (ev.OK, ev.DENIED) for e in events),
        "auth_failures": sum(e.kind == ev.AUTH_FAILED for e in events),
        "untokenisations": sum(len(e.untokenised) for e in events),
    }


def test_summary_and_sections_match_the_events(seeded: Seeded, tmp_path: Path) -> None:
    report = report_json(seeded, tmp_path)
    events = seeded.events
    summary = {k: report["summary"][k] for k in expected_summary(events)}
    assert summary == expected_summary(events)
    assert summary["tool_calls"] == 10 and summary["denials"] == 5  # and the fixture is what we think

    by_principal = {r["principal"]: r for r in report["access"]["by_principal"]}
    for who in ("alice", "bob", "carol"):
        mine = [e for e in events if e.principal == who]
        assert by_principal[who]["calls"] == sum(e.kind == ev.TOOL_CALL for e in mine)
        assert by_principal[who]["denials"] == sum(e.outcome == ev.DENIED for e in mine)
        assert by_principal[who]["executions"] == sum(e.kind == ev.CODE_EXECUTE for e in mine)
    assert "veil" not in by_principal

    by_tool = {(r["upstream"], r["tool"]): r["calls"] for r in report["access"]["by_tool"]}
    assert by_tool == Counter((e.upstream, e.tool) for e in events if e.kind == ev.TOOL_CALL)
    assert sum(d["calls"] for d in report["access"]["daily"]) == summary["tool_calls"]

    entities: Counter[str] = Counter()
    for e in events:
        entities.update(e.entities)
    assert {r["entity_type"]: r["values_tokenised"] for r in report["personal_data"]["by_entity_type"]} == entities
    by_source = {
        (r["entity_type"], r["upstream"]): r["values_tokenised"] for r in report["personal_data"]["by_upstream"]
    }
    assert by_source[("PHONE_NUMBER", "(sandbox)")] == 2 and by_source[("PERSON", "crm")] == 12

    assert report["flows"]["untokenisations"] == [
        {
            "entity_type": "EMAIL_ADDRESS",
            "destination": "mailer__send_email",
            "rule": "flows[0]:crm-to-mailer",
            "untokenisations": 2,
            "principals": 1,
        }
    ]
    denied = {(r["refusal"], r["rule"]): r["count"] for r in report["refusals"]["denied"]}
    assert denied == {("FlowDenied", "default:same-upstream"): 2, ("AccessDenied", "access[1]"): 1}
    assert report["refusals"]["auth_failed"][0]["count"] == 2
    assert {r["outcome"]: r["count"] for r in report["incidents"]["by_outcome"]} == {"timeout": 1, "memory": 1}
    assert [r["version"] for r in report["policies"]["loaded"]] == ["p1" * 32]
    assert report["integrity"]["verified"] is True
    assert report["integrity"]["events_checked"] == len(events)


def test_filters_by_principal_and_upstream(seeded: Seeded, tmp_path: Path) -> None:
    bob = [e for e in seeded.events if e.principal == "bob"]
    assert report_json(seeded, tmp_path, "--principal", "bob")["summary"]["events"] == len(bob)
    mailer = [e for e in seeded.events if e.upstream == "mailer"]
    report = report_json(seeded, tmp_path, "--upstream", "mailer")
    assert report["summary"]["tool_calls"] == len(mailer)
    assert report["summary"]["denials"] == sum(e.outcome == ev.DENIED for e in mailer)


def test_csv_carries_the_same_numbers_as_json(seeded: Seeded, tmp_path: Path) -> None:
    report = report_json(seeded, tmp_path)
    out = tmp_path / "r.csv"
    run("report", "--database-url", seeded.url, "--from", seeded.start, "--to", seeded.end, "--out", str(out))
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    summary = {r["metric"]: int(r["value"]) for r in rows if r["section"] == "summary"}
    assert summary == {k: v for k, v in report["summary"].items() if isinstance(v, int)}
    tool_calls = {r["key"]: int(r["value"]) for r in rows if r["table"] == "by_tool" and r["metric"] == "calls"}
    assert tool_calls == {f"upstream={r['upstream']}|tool={r['tool']}": r["calls"] for r in report["access"]["by_tool"]}


def test_html_is_self_contained_and_pdf_renders(seeded: Seeded, tmp_path: Path) -> None:
    html = tmp_path / "r.html"
    progress = run(
        "report", "--database-url", seeded.url, "--from", seeded.start, "--to", seeded.end, "--out", str(html)
    )
    text = html.read_text()
    for section in ("summary", "access", "personal-data", "flows", "refusals", "incidents", "policies", "integrity"):
        assert f"<section id='{section}'" in text
    assert "<svg" in text and "<script" not in text and "http://" not in text.replace("http://www.w3.org", "")
    assert "report: summary" in progress and "report: integrity" in progress
    try:
        import weasyprint  # noqa: F401
    except OSError as exc:  # the Pango system library is missing
        pytest.skip(f"WeasyPrint cannot load Pango ({exc}): apt-get install -y libpango-1.0-0 libpangoft2-1.0-0")
    pdf = tmp_path / "r.pdf"
    run("report", "--database-url", seeded.url, "--from", seeded.start, "--to", seeded.end, "--out", str(pdf))
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 5000


def test_html_renders_in_headless_chromium(seeded: Seeded, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium) - HTML screenshot check skipped")
    html = tmp_path / "r.html"
    run("report", "--database-url", seeded.url, "--from", seeded.start, "--to", seeded.end, "--out", str(html))
    shot = tmp_path / "r.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            f"--screenshot={shot}",
            "--window-size=1280,2400",
            html.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 2400)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50  # a rendered page, not a blank canvas


@pytest.mark.req("compliance:ropa")
def test_ropa_uses_policy_metadata_and_observed_data(seeded: Seeded, tmp_path: Path) -> None:
    out = tmp_path / "ropa.json"
    run(
        "report",
        "--kind",
        "ropa",
        "--database-url",
        seeded.url,
        "--from",
        seeded.start,
        "--to",
        seeded.end,
        "--out",
        str(out),
    )
    ropa = json.loads(out.read_text())
    assert ropa["purposes"] == ["Customer support handled with the help of an AI agent"]  # policies/default.yaml
    assert {r["entity_type"] for r in ropa["data_categories"]} == {"EMAIL_ADDRESS", "PERSON", "PHONE_NUMBER"}
    assert [(r["recipient"], r["values_sent"]) for r in ropa["recipients"]] == [("mailer", 2)]
    for fmt in ("html", "csv"):
        path = tmp_path / f"ropa.{fmt}"
        run(
            "report",
            "--kind",
            "ropa",
            "--database-url",
            seeded.url,
            "--from",
            seeded.start,
            "--to",
            seeded.end,
            "--out",
            str(path),
        )
        assert "EMAIL_ADDRESS" in path.read_text()


@pytest.mark.req("compliance:access-log")
def test_access_log_lists_every_access(seeded: Seeded, tmp_path: Path) -> None:
    out = tmp_path / "access.csv"
    run(
        "report",
        "--kind",
        "access-log",
        "--database-url",
        seeded.url,
        "--from",
        seeded.start,
        "--to",
        seeded.end,
        "--out",
        str(out),
    )
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    kinds = {ev.TOOL_CALL, ev.CODE_EXECUTE, ev.AUTH_FAILED, ev.SESSION_OPEN}
    assert len(rows) == sum(e.kind in kinds for e in seeded.events)
    first_call = next(r for r in rows if r["kind"] == ev.TOOL_CALL)
    assert first_call["principal"] == "alice" and first_call["entity_types"] == "EMAIL_ADDRESS PERSON"
    assert first_call["values_tokenised"] == "5"
    sends = [r for r in rows if r["tool"] == "send_email" and r["outcome"] == "ok"]
    assert [r["destinations"] for r in sends] == ["mailer__send_email", "mailer__send_email"]


def test_bad_options_are_explained(seeded: Seeded, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "report",
            "--database-url",
            seeded.url,
            "--from",
            seeded.start,
            "--to",
            seeded.end,
            "--out",
            str(tmp_path / "r.txt"),
        ],
    )
    assert result.exit_code == 2 and "--format" in result.output
    result = CliRunner().invoke(
        main,
        [
            "report",
            "--kind",
            "access-log",
            "--database-url",
            seeded.url,
            "--from",
            seeded.start,
            "--to",
            seeded.end,
            "--out",
            str(tmp_path / "a.html"),
        ],
    )
    assert result.exit_code == 2 and "csv or json" in result.output
