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
@click.option("--certfile", type=click.Path(dir_okay=False, exists=True), help="TLS certificate (PEM) to serve HTTPS.")
@click.option("--keyfile", type=click.Path(dir_okay=False, exists=True), help="TLS private key (PEM) for --certfile.")
def console(config_path: str, listen: str, certfile: str | None, keyfile: str | None) -> None:
    """Serve the web console: audit explorer, data subjects, reports and policies."""
    import uvicorn

    from veil.console import ConsoleServices, create_app
    from veil.proxy.cli import parse_listen

    config = load_config(config_path)
    host, port = parse_listen(listen)
    if bool(certfile) != bool(keyfile):
        raise click.UsageError("--certfile and --keyfile go together")
    scheme = "https" if certfile else "http"
    if not certfile and host not in ("127.0.0.1", "localhost", "::1"):
        # Browsers keep the Secure session cookie only over HTTPS (or on loopback): say why login would loop.
        click.echo(
            f"veil: warning: {host} is not loopback and no --certfile is given; browsers will not keep "
            "the console's Secure cookie over plain HTTP: serve it with TLS (or behind a TLS proxy)",
            err=True,
        )
    services = ConsoleServices.from_config(config)
    try:
        click.echo(f"veil: console on {scheme}://{host}:{port}/console/", err=True)
        uvicorn.run(
            create_app(services),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,  # nothing of a request's URL or body is logged
            lifespan="off",
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
        )
    finally:
        services.close()
