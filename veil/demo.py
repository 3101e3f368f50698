"""``veil demo``: a scripted agent session through a real gateway, shown from both sides.

The demo starts ``veil serve`` on the bundled demo config as a subprocess (exactly what a
desktop agent would do), connects a real MCP client to it over stdio, and then prints, step by
step, what the agent saw (tokens only), what the upstreams received (real values, read from
their call logs), and the audit rows Veil wrote.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import click
import sqlalchemy as sa
import yaml

from veil import db
from veil.config import VeilConfig, load_config
from veil.resources import shipped_file

DEMO_CONFIG = shipped_file("examples", "veil.yaml")
WIDTH = 100


def _show(title: str, body: Any) -> None:
    click.secho(f"\n── {title} " + "─" * max(0, WIDTH - len(title) - 4), fg="cyan", bold=True)
    text = body if isinstance(body, str) else json.dumps(body, indent=2, ensure_ascii=False)
    lines = [w for line in text.splitlines() for w in (textwrap.wrap(line, WIDTH, subsequent_indent="  ") or [""])]
    for line in lines[:40]:
        click.echo("  " + line)
    if len(lines) > 40:
        click.echo(f"  … ({len(lines) - 40} more lines)")


def _side_by_side(left_title: str, left: str, right_title: str, right: str) -> None:
    half = WIDTH // 2 - 2
    click.secho(f"\n  {left_title:<{half}}  {right_title}", bold=True)
    lw = [w for line in left.splitlines() for w in (textwrap.wrap(line, half) or [""])]
    rw = [w for line in right.splitlines() for w in (textwrap.wrap(line, half) or [""])]
    for i in range(max(len(lw), len(rw))):
        a = lw[i] if i < len(lw) else ""
        b = rw[i] if i < len(rw) else ""
        click.echo(f"  {a:<{half}}│ {b}")


def _text(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


def _last_call(log: Path) -> dict[str, Any] | None:
    if not log.exists():
        return None
    lines = [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None


async def run_demo(config_path: Path, database_url: str) -> None:
    """Drive the scripted session against a gateway serving ``config_path``; ``database_url`` is
    where that gateway writes (read back for the audit table)."""
    from mcp.client.client import Client
    from mcp.client.stdio import StdioServerParameters
    from mcp.shared.exceptions import MCPError

    config = load_config(config_path)
    data_dir = config.data_dir
    logs = {name: _call_log(up) for name, up in config.upstreams.items()}
    outbox = logs.get("mailer") or data_dir / "mailer-outbox.jsonl"
    for stale in logs.values():
        if stale is not None:
            stale.unlink(missing_ok=True)

    click.secho("Veil demo: an agent works with a CRM through the gateway.", bold=True)
    click.echo(f"config: {config_path}   policy: {config.policy}   data: {data_dir}")
    click.echo("Starting `veil serve`…")

    params = StdioServerParameters(
        # Veil's own environment (the SDK's default passes only a few variables, dropping e.g.
        # PYTHONPATH, so a source checkout would serve another installed copy).
        command=sys.executable,
        args=["-m", "veil", "serve", "--config", str(config_path)],
        env=dict(os.environ),
    )
    async with Client(params, mode="legacy", read_timeout_seconds=120) as agent:
        tools = await agent.list_tools()
        _show("1. The agent lists tools (one server: Veil)", [t.name for t in tools.tools])

        found = await agent.call_tool("crm__find_customers", {"segment": "gold", "limit": 2})
        _show("2. The agent calls crm__find_customers: what the MODEL sees", _text(found))
        customers = found.structured_content or {}
        first = (customers.get("result") or customers.get("customers") or [{}])[0] if customers else {}
        email_token = first.get("email", "[EMAIL_ADDRESS_1]")

        body = "Thank you for being a gold customer. Your account manager will call you this week."
        args = {"to": email_token, "subject": "Your gold benefits", "body": body}
        try:
            sent = await agent.call_tool("mailer__send_email", args)
            agent_view = _text(sent)
        except MCPError as exc:
            agent_view = f"refused: {exc.message}"
        call = _last_call(outbox)
        _show("3. The agent sends an e-mail with tokens in the arguments", "")
        _side_by_side(
            "agent sent (tokens):",
            json.dumps(args, indent=1, ensure_ascii=False) + "\n\nagent got back:\n" + agent_view,
            "mailer upstream received (real values):",
            json.dumps(call["arguments"], indent=1, ensure_ascii=False) if call else "(nothing: flow refused)",
        )

        ssn_args = {"to": email_token, "subject": "SSN", "body": f"SSN on file: {first.get('ssn', '[US_SSN_1]')}"}
        try:
            await agent.call_tool("mailer__send_email", ssn_args)
            refused = "sent (the policy allows it)"
        except MCPError as exc:
            refused = exc.message
        _show("4. A flow the policy refuses: an SSN to the mailer", refused)

        code = textwrap.dedent(
            """
            from servers import crm
            rows = crm.export_customers()
            gold_ca = [r for r in rows if r["segment"] == "gold" and r["address"]["state"] == "CA"]
            print(f"{len(rows)} customers exported, {len(gold_ca)} gold in CA")
            [(r["full_name"], r["email"]) for r in gold_ca[:3]]
            """
        ).strip()
        try:
            ran = await agent.call_tool("execute_code", {"code": code})
            code_view = _text(ran)
        except MCPError as exc:
            code_view = f"execute_code unavailable: {exc.message}"
        _show(
            "5. execute_code: 400 records filtered in the sandbox, only the answer returns", code + "\n\n" + code_view
        )

    engine = sa.create_engine(db.normalise_url(database_url))
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT seq, kind, coalesce(upstream || '__' || tool, tool, '') AS what, outcome, "
                "coalesce(rule, '') AS rule, entities::text AS entities, "
                "jsonb_array_length(untokenised) AS untok FROM audit_events ORDER BY seq DESC LIMIT 12"
            )
        ).all()
    engine.dispose()
    table = [f"{'seq':>5} {'kind':<16} {'what':<28} {'outcome':<8} {'untok':>5}  rule / entities"]
    for r in reversed(rows):
        table.append(
            f"{r.seq:>5} {r.kind:<16} {r.what[:28]:<28} {r.outcome:<8} {r.untok:>5}  {r.rule or r.entities}"[:WIDTH]
        )
    _show("6. Audit rows written (no raw values: tokens, digests, counts, rules)", "\n".join(table))
    click.echo(
        f"\nNext: `veil serve --config {config_path}` for a real agent, `veil report` for compliance, "
        "`veil audit verify` to check the chain."
    )


def _call_log(upstream: Any) -> Path | None:
    """Where a demo upstream logs the calls it received (its *_LOG / *_OUTBOX variable)."""
    env = getattr(upstream, "env", {}) or {}
    for key, value in env.items():
        if key.endswith(("_LOG", "_OUTBOX")):
            path = Path(value)
            return path if path.is_absolute() else (upstream.cwd or Path.cwd()) / path
    return None


def effective_config(
    config_path: Path | None, data_dir: Path | None, database_url: str | None
) -> tuple[VeilConfig, dict[str, Any]]:
    """The config the demo serves: ``config_path`` (default: the bundled one) with the data
    directory and database URL overridden, and the demo upstreams' call logs moved into the
    data directory whenever the data directory moves."""
    bundled = config_path is None
    config = load_config(config_path or DEMO_CONFIG)
    if bundled and data_dir is None:
        data_dir = Path(".veil")
    raw = config.model_dump(mode="json", exclude={"source"})
    if data_dir is not None:
        data_dir = data_dir.resolve()
        raw["data_dir"] = str(data_dir)
        for upstream in raw["upstreams"].values():
            env = upstream.get("env") or {}
            for key, value in env.items():
                if key.endswith(("_LOG", "_OUTBOX")):
                    env[key] = str(data_dir / Path(value).name)
    if database_url:
        raw["database_url"] = database_url
    return config, raw


@contextmanager
def demo_database(raw: dict[str, Any]) -> Iterator[str]:
    """The URL the demo uses; an embedded server the demo had to start is stopped on the way out."""
    if raw.get("database_url"):
        yield raw["database_url"]
        return
    data_dir = Path(raw["data_dir"])
    was_running = db.embedded_status(data_dir).running
    click.echo(f"Starting the embedded PostgreSQL in {data_dir / 'pg'} (the first run takes a few seconds)…")
    url = db.start_embedded(data_dir)
    try:
        yield url
    finally:
        if was_running:
            click.echo(
                f"\nThe embedded PostgreSQL was already running: left running (`veil db stop --data-dir {data_dir}`)."
            )
        elif db.stop_embedded(data_dir):
            click.echo("\nStopped the embedded PostgreSQL the demo started.")


@click.command("demo")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Gateway config with the demo upstreams [default: the bundled examples/veil.yaml].",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the demo keeps its keys, call logs and embedded database [default: ./.veil with the "
    "bundled config, else the config's data_dir].",
)
@click.option(
    "--database-url",
    envvar="VEIL_DATABASE_URL",
    help="PostgreSQL to use instead of the embedded server (overrides the config).",
)
def demo(config_path: Path | None, data_dir: Path | None, database_url: str | None) -> None:
    """Run a scripted agent session against the demo CRM and show what each side saw."""
    _, raw = effective_config(config_path, data_dir, database_url)
    target = Path(raw["data_dir"])
    target.mkdir(parents=True, exist_ok=True)
    # Without database_url the gateway attaches to the embedded server started below (same data_dir),
    # and the written config stays usable after the demo: `veil serve --config` starts it again.
    effective = target / "demo.veil.yaml"
    effective.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    with demo_database(raw) as url:
        anyio.run(run_demo, effective, url)
