"""``veil console``: the web console as a process of its own (see docs/console.md)."""

from __future__ import annotations

import click

from veil.config import load_config


@click.command("console")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="The gateway's veil.yaml: same database, identities, policy file and data directory.",
)
@click.option(
    "--http",
    "listen",
    metavar="HOST:PORT",
    default="127.0.0.1:8766",
    show_default=True,
    help="Where to listen; the console is at http://HOST:PORT/console/.",
)
def console(config_path: str, listen: str) -> None:
    """Serve the web console: audit explorer, data subjects, reports and policies."""
    import uvicorn

    from veil.console import ConsoleServices, create_app
    from veil.proxy.cli import parse_listen

    config = load_config(config_path)
    host, port = parse_listen(listen)
    services = ConsoleServices.from_config(config)
    try:
        click.echo(f"veil: console on http://{host}:{port}/console/", err=True)
        uvicorn.run(create_app(services), host=host, port=port, log_level="warning", access_log=False, lifespan="off")
    finally:
        services.close()
