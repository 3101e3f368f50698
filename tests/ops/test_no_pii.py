"""Nothing operations exports carries personal data, and the metrics really move.

One real ``veil serve --http`` per log format, in front of the demo upstreams seeded with
customers; an MCP client makes calls that carry those customers' values every way a call can
(tokenised results, tokens untokenised to an upstream, raw values typed by the agent, a raw
value as a tool name and as an argument key an upstream echoes in its error, a refused flow).
Then every exported metric line, every log line and every span is searched for every seeded
value in all the forms the security corpus checks (tests/security/leakcheck.py).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from prometheus_client.parser import text_string_to_metric_families
from security.leakcheck import leaks

from examples.crm_data import generate_customers, ground_truth_values
from ops.conftest import CRM, Collector, demo_config, free_port, serve
from veil.ops.health import CACHE_S

pytestmark = pytest.mark.req("ops:no-pii")

CUSTOMERS = generate_customers(int(CRM["CRM_RECORDS"]), int(CRM["CRM_SEED"]))
SEEDED = sorted({v for values in ground_truth_values(CUSTOMERS).values() for v in values})
TOKEN = re.compile(r"\[([A-Z_]+)_\d+\]")


def _text(result: Any) -> str:
    return json.dumps(result.model_dump(mode="json", by_alias=True, exclude_none=True), ensure_ascii=False)


def _token(text: str, kind: str) -> str:
    match = re.search(rf"\[{kind}_\d+\]", text)
    assert match, f"no {kind} token in {text[:300]}"
    return match.group(0)


async def _agent_calls(url: str, key: str | None = None) -> None:
    """Calls that carry seeded values in every direction; some are meant to fail."""
    c1 = CUSTOMERS[0]
    headers = {"Authorization": f"Bearer {key}"} if key else None
    http = httpx.AsyncClient(headers=headers, timeout=120)
    async with http, Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
        await client.list_tools()
        found = _text(await client.call_tool("crm__find_customers", {"limit": 5}))
        one = _text(await client.call_tool("crm__get_customer", {"customer_id": c1["id"]}))
        assert c1["email"] not in one and "[EMAIL_ADDRESS_" in one, "the agent must see tokens"
        email = _token(one, "EMAIL_ADDRESS")
        # A token untokenised to the upstream (policy: crm e-mail to mailer "to").
        sent = await client.call_tool("mailer__send_email", {"to": email, "subject": "Hello", "body": "Hi there"})
        assert not sent.is_error, _text(sent)
        # Raw values typed by the agent, sent on to upstreams.
        note = f"Call {c1['full_name']} at {c1['phone']} or {c1['email']}"
        await client.call_tool("crm__add_note", {"customer_id": c1["id"], "note": note})
        ticket = {"title": c1["full_name"], "body": note, "customer_email": email}
        await client.call_tool("tickets__create_ticket", ticket)
        # An upstream that echoes the caller's keys in its error (update_customer), a raw value as key.
        changes = {"customer_id": c1["id"], "changes": {c1["email"]: "x"}}
        assert (await client.call_tool("crm__update_customer", changes)).is_error
        # Refused flows: a card number may never leave the CRM (policy no-payment-data-outside-crm).
        card = _token(found, "CREDIT_CARD")
        with pytest.raises(MCPError):
            await client.call_tool("mailer__send_email", {"to": email, "subject": "card", "body": card})
        # Raw values as tool names: unknown tools, refused at admit.
        for name in (f"crm__{c1['email']}", c1["ssn"], f"mailer__{c1['full_name'].replace(' ', '_')}"):
            with pytest.raises(MCPError):
                await client.call_tool(name, {"q": c1["phone"]})


async def _call_ghost(url: str) -> None:
    async with Client(url, mode="legacy", read_timeout_seconds=120) as client:
        with pytest.raises(MCPError):
            await client.call_tool("ghost__anything", {})


CODE = """
from servers import crm
record = crm.get_customer(customer_id="C0002")
print(record["email"], record["phone"])
"""


async def _code_call(url: str, metrics_url: str) -> str:
    """execute_code reading a customer (the sandbox sees tokens); metrics scraped while the
    session, and so its sandbox interpreter, is alive."""
    async with Client(url, mode="legacy", read_timeout_seconds=120) as client:
        result = await client.call_tool("execute_code", {"code": CODE})
        text = _text(result)
        assert not result.is_error and "[EMAIL_ADDRESS_" in text, text[:500]
        assert CUSTOMERS[1]["email"] not in text
        async with httpx.AsyncClient(timeout=10) as http:
            return (await http.get(metrics_url)).text


def _scrape(url: str) -> str:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text[:300]
    return response.text


def _value(metrics: str, name: str, **want: str) -> float:
    """The sum of a sample's values over series whose labels include ``want``."""
    total = 0.0
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in want.items()):
                total += sample.value
    return total


def _assert_moved(metrics: str) -> None:
    """The metrics count what happened (so this test can fail when nothing is recorded)."""
    ok = {"method": "tools/call", "outcome": "ok"}
    assert _value(metrics, "veil_calls_total", **ok, upstream="crm", tool="get_customer") >= 1
    assert _value(metrics, "veil_calls_total", method="tools/call", upstream="mailer", tool="send_email") >= 2
    assert _value(metrics, "veil_calls_total", method="tools/call", outcome="error", upstream="", tool="") >= 1
    assert _value(metrics, "veil_entities_tokenised_total", entity_type="EMAIL_ADDRESS") > 0
    assert _value(metrics, "veil_denials_total", stage="untokenise", reason="FlowDenied") >= 1
    stages = ("authenticate", "admit", "access", "untokenise", "audit_intent", "exchange", "tokenise", "audit_outcome")
    for stage in stages:
        assert _value(metrics, "veil_stage_duration_seconds_count", stage=stage) > 0, stage
    assert _value(metrics, "veil_call_duration_seconds_count", method="tools/call") >= 8
    assert _value(metrics, "veil_audit_events_written_total") > 0
    assert _value(metrics, "veil_audit_write_duration_seconds_count") > 0
    assert _value(metrics, "veil_audit_writer_up") == 1
    assert _value(metrics, "veil_sessions_active") >= 0
    assert _value(metrics, "veil_upstream_state", upstream="crm", state="up") == 1
    assert _value(metrics, "veil_upstream_state", upstream="mailer", state="up") == 1
    assert _value(metrics, "veil_http_responses_total", endpoint="mcp", status="200") > 0
    assert _value(metrics, "process_resident_memory_bytes") > 0
    names = {s.labels.get("tool") for f in text_string_to_metric_families(metrics) for s in f.samples}
    assert names <= {
        None,
        "",
        "other",
        "find_customers",
        "get_customer",
        "send_email",
        "add_note",
        "create_ticket",
        "update_customer",
        "execute_code",
    }, names


def _spans(collector: Collector) -> tuple[str, list[Any]]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    spans, lines = [], []
    for body in collector.bodies:
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    spans.append(span)
                    attrs = " ".join(f"{a.key}={a.value}" for a in span.attributes)
                    lines.append(f"{scope.scope.name} {span.name} {attrs} {span.status.message}")
        # Every string field in the export as sent, wherever it sits (resource, scope, span, event,
        # link, attribute). Not the serialised bytes: their random ids and fixed64 timestamps,
        # decoded as text, sometimes spell a short seeded surname ('Do') between non-letters.
        lines.extend(_strings_in(request))
    return "\n".join(lines), spans


def _strings_in(message: Any) -> list[str]:
    """Every string-typed field of a protobuf message and of the messages inside it, and the
    numbers an attribute value carries (a value could leave as an int)."""
    from google.protobuf.descriptor import FieldDescriptor

    found: list[str] = []
    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        for item in values:
            if field.type == FieldDescriptor.TYPE_STRING:
                found.append(item)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                found.extend(_strings_in(item))
            elif message.DESCRIPTOR.name == "AnyValue" and field.type != FieldDescriptor.TYPE_BYTES:
                found.append(str(item))
    return found


def _assert_no_leak(captured: dict[str, str]) -> None:
    """Each line is a haystack of its own (a metric sample, a log record, a span), so the loose
    forms (letters and digits only, reversed) cannot match across neighbouring lines."""
    lines = {f"{where} line {n}": line for where, text in captured.items() for n, line in enumerate(text.splitlines())}
    found = leaks(lines, SEEDED)
    assert not found, "\n".join(f"{leak.value!r} ({leak.form}) in {leak.where}" for leak in found[:10])


def test_metrics_logs_and_spans_carry_no_seeded_value_json(
    tmp_path: Path, sandbox_data_dir: Path | None, ops_database: str, otlp_collector: Collector
) -> None:
    """JSON logs (config), tracing to a loopback OTLP receiver, metrics on a listener of their own,
    and execute_code in the real sandbox (its calls are flows too, ``via=code``)."""
    metrics_port = free_port()
    code = sandbox_data_dir is not None  # without root there is no sandbox: the rest still runs
    config = demo_config(
        sandbox_data_dir or tmp_path / "data",
        ops_database,
        observability={"log_format": "json", "tracing": True, "metrics": {"listen": f"127.0.0.1:{metrics_port}"}},
        **({"expose": "both", "sandbox": {"pool_size": 1}} if code else {}),
    )
    # An upstream that cannot start: its state is "down", and Veil stays ready for the others.
    config["upstreams"]["ghost"] = {"command": str(tmp_path / "no-such-server")}
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with serve(tmp_path / "run", config, env=env) as served:
        anyio.run(_agent_calls, served.mcp)
        anyio.run(_call_ghost, served.mcp)
        if code:
            during = anyio.run(_code_call, served.mcp, f"http://127.0.0.1:{metrics_port}/metrics")
            assert _value(during, "veil_sandbox_running") >= 1 and _value(during, "veil_sessions_active") >= 1
        metrics = _scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        # Metrics left the MCP listener: not found there, even for an allowed principal.
        assert httpx.get(f"{served.base}/metrics", timeout=10).status_code != 200
        ready = httpx.get(f"{served.base}/readyz", timeout=30)
        assert ready.status_code == 200, ready.text
        assert ready.json()["upstreams"] == {"crm": "up", "mailer": "up", "tickets": "up", "ghost": "down"}
        probes = httpx.get(f"{served.base}/healthz").text + ready.text
        served.stop()  # flushes the span exporter
        log = served.log()
    _assert_moved(metrics)
    assert _value(metrics, "veil_upstream_state", upstream="ghost", state="down") == 1
    if code:
        assert _value(metrics, "veil_calls_total", method="tools/call", outcome="ok", tool="execute_code") >= 1
    span_text, spans = _spans(otlp_collector)
    names = {span.name for span in spans}
    assert "veil tools/call" in names and "veil.stage.exchange" in names, names
    assert not any(name.startswith("MCP ") or "tools/call " in name for name in names), "the MCP SDK's spans leaked"
    lines = [line for line in log.splitlines() if line.strip()]
    assert lines, "no log output at -vv"
    plain = [line for line in lines if not line.startswith("{")]
    # The command's own status lines (veil: serving ..., veil: stopped ...) are printed, not logged.
    assert all(line.startswith("veil: ") for line in plain), plain[:5]
    for line in lines:
        if line.startswith("{"):
            record = json.loads(line)
            assert set(record) >= {"ts", "level", "logger", "message"}
    _assert_no_leak({"metrics": metrics, "log": log, "spans": span_text, "probes": probes})


def test_text_logs_and_authenticated_metrics_carry_no_seeded_value(tmp_path: Path, ops_database: str) -> None:
    """Text logs; /metrics on the MCP listener behind its authentication (an API key), while the
    probes answer without credentials. Then the database goes away: /readyz says 503 and names
    the failed check, /healthz stays 200 (a database outage must not restart every replica)."""
    from veil import db
    from veil.auth import create_key

    config = demo_config(tmp_path / "data", ops_database, auth={"required": True})
    engine = db.create_engine(ops_database)
    _, key = create_key(engine, "ops-test", ["support"])
    engine.dispose()
    with serve(tmp_path / "run", config) as served:
        assert httpx.get(f"{served.base}/metrics", timeout=10).status_code == 401
        anyio.run(_agent_calls, served.mcp, key)
        response = httpx.get(f"{served.base}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert response.status_code == 200
        metrics = response.text
        ready = httpx.get(f"{served.base}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        ner = ready.json()["checks"]["ner_workers"]
        assert ner["ok"] is True and ner["state"] in ("starting", "ready") and ner["size"] >= 1, ner
        probes = ready.text + httpx.get(f"{served.base}/healthz", timeout=10).text

        _drop_database(ops_database)
        # Probes share one database check per CACHE_S: the outage shows by the next check, not
        # necessarily on the very next probe (on a quiet machine the drop takes under a second).
        deadline = time.monotonic() + 10 * CACHE_S + 5
        down = httpx.get(f"{served.base}/readyz", timeout=30)
        while down.status_code == 200 and time.monotonic() < deadline:
            time.sleep(CACHE_S / 4)
            down = httpx.get(f"{served.base}/readyz", timeout=30)
        assert down.status_code == 503, down.text
        body = down.json()
        assert body["status"] == "not ready" and body["checks"]["database"]["ok"] is False, body
        assert "postgres" not in down.text.lower() and "127.0.0.1" not in down.text, "no host or role names"
        assert httpx.get(f"{served.base}/healthz", timeout=10).status_code == 200
        served.stop()
        log = served.log()
    _assert_moved(metrics)
    assert _value(metrics, "veil_http_responses_total", endpoint="metrics", status="401") >= 1
    assert " DEBUG " in log, "the text log ran at -vv"
    _assert_no_leak({"metrics": metrics, "log": log, "probes": probes + down.text})


def _drop_database(url: str) -> None:
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from veil import db

    target = make_url(db.normalise_url(url))
    admin = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE "{target.database}" WITH (FORCE)'))
    admin.dispose()
