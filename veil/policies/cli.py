"""``veil policy``: schema, lint, test, explain and diff for policy documents.

Nothing here touches the database or the network; only ``explain --text/--json`` and detection
test cases load the tokenizer's detection (Presidio and spaCy).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from pathlib import Path

import click

from veil.errors import PolicyError
from veil.policies.loader import load_policy
from veil.principal import Principal


class _PolicyGroup(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except PolicyError as exc:  # written for people: the message names file:line:col
            raise click.ClickException(str(exc)) from None


@click.group("policy", cls=_PolicyGroup)
def policy_group() -> None:
    """Lint, test, explain and diff policy documents."""


@policy_group.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema policy documents are validated against."""
    from veil.policies.schema import schema_json

    click.echo(schema_json(), nl=False)


def _quiet_presidio() -> None:
    """Presidio logs a warning per recognizer it skips for other languages: noise in a report."""
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)


def _tools_file(path: str) -> list[str]:
    try:
        tools = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise click.ClickException(
            f"{path}: cannot read the tool list ({exc}); give a JSON list of NAME__TOOL"
        ) from None
    if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
        raise click.ClickException(f"{path}: expected a JSON list of tool names written NAME__TOOL")
    return tools


@policy_group.command("lint")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--config", "config", type=click.Path(dir_okay=False), help="veil.yaml: check destinations name its upstreams."
)
@click.option(
    "--tools",
    "tools_file",
    type=click.Path(dir_okay=False),
    help="JSON list of NAME__TOOL names to check destinations against.",
)
def lint_cmd(file: str, config: str | None, tools_file: str | None) -> None:
    """Check FILE against the schema and for semantic errors; exit 1 when there are any."""
    from veil.policies.lint import lint_file

    tools = _tools_file(tools_file) if tools_file else None
    upstreams = None
    if config:
        from veil.config import load_config

        upstreams = sorted(load_config(config).upstreams)
    problems = lint_file(file, tools=tools, upstreams=upstreams)
    for p in problems:
        click.echo(str(p))
    if problems:
        click.echo(f"{len(problems)} problem(s) found in {file}", err=True)
        sys.exit(1)
    click.echo(f"{file}: ok")


@policy_group.command("test")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("cases", nargs=-1, type=click.Path(dir_okay=False))
def test_cmd(file: str, cases: tuple[str, ...]) -> None:
    """Run the test cases of FILE (default: policies/tests/<stem>*.yaml next to it)."""
    from veil.policies.testing import case_files, needs_detection, report, run_cases

    policy = load_policy(file)
    files = [Path(c) for c in cases] or case_files(Path(file))
    if not files:
        where = Path(file).resolve().parent / "tests" / f"{Path(file).stem}.yaml"
        raise click.ClickException(f"no test cases for {file}: write them in {where}")
    detector = None
    if needs_detection(files):
        from veil.policies.detection import make_detector

        _quiet_presidio()
        detector = make_detector(policy.detection)
    results = run_cases(policy, files, detector=detector)
    click.echo(report(results), nl=False)
    if any(r.status == "fail" for r in results):
        sys.exit(1)


def _parse_now(now: str | None) -> datetime | None:
    if not now:
        return None
    try:
        return datetime.fromisoformat(now.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter("use an ISO 8601 time such as 2025-01-31T09:00:00Z", param_hint="--now") from None


@policy_group.command("explain")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--text", help="Text to run detection on.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), help="JSON file to run detection on.")
@click.option("--call", help="""A tool call: 'crm__send_email {"to": "[EMAIL_ADDRESS_1]"}'.""")
@click.option("--resource", help="A resource, written UPSTREAM:URI: which access rule decides reading it.")
@click.option("--prompt", help="A prompt, written UPSTREAM__PROMPT: which access rule decides getting it.")
@click.option("--action", help="With --resource/--prompt: read, subscribe, get or complete (default read/get).")
@click.option("--principal", default="anonymous", show_default=True, help="Who makes the call.")
@click.option("--role", "roles", multiple=True, help="A role of the principal (repeatable).")
@click.option("--tenant", help="The principal's tenant.")
@click.option("--source", "sources", multiple=True, help="Upstream the tokens' values came from (repeatable).")
@click.option("--now", help="Evaluate conditions at this ISO time instead of the current time.")
def explain_cmd(
    file: str,
    text: str | None,
    json_file: str | None,
    call: str | None,
    resource: str | None,
    prompt: str | None,
    action: str | None,
    principal: str,
    roles: tuple[str, ...],
    tenant: str | None,
    sources: tuple[str, ...],
    now: str | None,
) -> None:
    """Show what FILE detects in a text or JSON document, or which rules decide a tool call, a
    resource or a prompt."""
    if sum(x is not None for x in (text, json_file, call, resource, prompt)) != 1:
        raise click.UsageError("give exactly one of --text, --json or --call (or --resource, --prompt)")
    policy = load_policy(file)
    if resource is not None or prompt is not None:
        from veil.policies.explain import explain_target

        who = Principal(name=principal, roles=frozenset(roles), tenant=tenant, via="config")
        kind, target = ("resource", resource) if resource is not None else ("prompt", prompt)
        try:
            out = explain_target(policy, kind, target or "", action, who, now=_parse_now(now))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=f"--{kind}") from None
        click.echo(out, nl=False)
        return
    if call is not None:
        from veil.policies.explain import explain_call

        when = None
        if now:
            try:
                when = datetime.fromisoformat(now.replace("Z", "+00:00"))
            except ValueError:
                raise click.BadParameter(
                    "use an ISO 8601 time such as 2025-01-31T09:00:00Z", param_hint="--now"
                ) from None
        who = Principal(name=principal, roles=frozenset(roles), tenant=tenant, via="config")
        try:
            text_out = explain_call(policy, call, who, frozenset(sources), now=when)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--call") from None
        click.echo(text_out, nl=False)
        return
    from veil.policies.detection import make_detector
    from veil.policies.explain import explain_detection

    _quiet_presidio()
    detector = make_detector(policy.detection)
    if isinstance(detector, str):
        raise click.ClickException(detector.replace("detection cases", "explain --text/--json"))
    if json_file is not None:
        try:
            value = json.loads(Path(json_file).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise click.ClickException(f"{json_file}: cannot read JSON ({exc})") from None
    else:
        value = text
    click.echo(explain_detection(policy, detector, value), nl=False)


@policy_group.command("diff")
@click.argument("old", type=click.Path(dir_okay=False))
@click.argument("new", type=click.Path(dir_okay=False))
def diff_cmd(old: str, new: str) -> None:
    """Say in words what changes in effect from OLD to NEW."""
    from veil.policies.diff import diff_policies

    try:
        a, b = load_policy(old), load_policy(new)
    except PolicyError as exc:
        raise click.ClickException(str(exc)) from None
    changes = diff_policies(a, b)
    if not changes:
        same = " (only formatting or comments differ)" if a.version != b.version else ""
        click.echo(f"no change in effect{same}")
        return
    for line in changes:
        click.echo(f"- {line}")
