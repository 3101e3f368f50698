"""``veil serve``: run the gateway."""

from __future__ import annotations

import anyio
import click

from veil.config import load_config
from veil.errors import ConfigError


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"--http expects HOST:PORT (for example 127.0.0.1:8765), got {value!r}")
    return host.strip("[]"), int(port)


@click.command("serve")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="veil.yaml (or a Claude-Desktop style mcpServers JSON file).",
)
@click.option("--http", "listen", metavar="HOST:PORT", help="Serve Streamable HTTP instead of stdio.")
def serve(config_path: str, listen: str | None) -> None:
    """Run the gateway: MCP over stdio by default, Streamable HTTP with --http HOST:PORT."""
    config = load_config(config_path)  # config errors first, before the heavy imports
    address = parse_listen(listen) if listen else None

    from veil.proxy.gateway import Gateway
    from veil.proxy.transports import serve_http, serve_stdio

    async def main() -> None:
        async with Gateway(config) as gateway:
            if address:
                click.echo(f"veil: serving MCP on http://{address[0]}:{address[1]}/mcp", err=True)
                await serve_http(gateway, *address)
            else:
                await serve_stdio(gateway)

    anyio.run(main)
