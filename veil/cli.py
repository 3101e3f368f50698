"""The ``veil`` command. Each subcommand lives next to the code it drives and is registered in
``SUBCOMMANDS``, so this table is the one index of everything a user can run. Modules load only
when their subcommand runs: ``veil policy lint`` does not pay for spaCy or the MCP stack."""

from __future__ import annotations

import importlib
import logging

import click

from veil.errors import VeilError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("veil.proxy.cli:serve", "Run the gateway (MCP over stdio, or Streamable HTTP)."),
    "demo": (
        "veil.demo:demo",
        "Run a scripted agent session against a demo CRM and show what each side saw.",
    ),
    "db": ("veil.dbcli:db_group", "Create and migrate Veil's tables."),
    "policy": ("veil.policies.cli:policy_group", "Lint, test, explain and diff policy documents."),
    "keys": ("veil.auth.cli:keys_group", "Create, list and revoke API keys for HTTP principals."),
    "audit": ("veil.audit.cli:audit_group", "Verify the audit trail, sign checkpoints, apply retention."),
    "report": ("veil.compliance.cli:report", "Produce a compliance report for a period."),
    "subject": ("veil.compliance.cli:subject_group", "Find or erase a data subject's values."),
    "console": ("veil.console.cli:console", "Serve the web console (audit, data subjects, reports, policies)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module, attr = SUBCOMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUBCOMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except VeilError as exc:
            # Our errors are written for people: print the message, not a traceback.
            raise click.ClickException(str(exc)) from None


@click.group(cls=LazyGroup)
@click.version_option(package_name="veil")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    envvar="VEIL_LOG_FORMAT",
    help="Log lines as text or one JSON object each (default: the config's observability.log_format, else text).",
)
def main(verbose: int, log_format: str | None) -> None:
    """Veil: a privacy-preserving MCP gateway."""
    from veil.ops import logs

    logs.configure(logging.WARNING - 10 * min(verbose, 2), log_format)
