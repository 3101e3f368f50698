"""``veil serve``: run the gateway."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys

import anyio
import click

from veil import ops
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
    # A stop signal during the imports and the reclaim below (seconds on a busy host) is noted and
    # honoured once the gateway's own handlers are in place: nothing is started, exit 0.
    early: list[str] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: early.append(signal.Signals(signum).name))
    config = load_config(config_path)  # config errors first, before the heavy imports
    ops.configure(config)  # the config's log format from here on; tracing set up (docs/operations.md)
    address = parse_listen(listen) if listen else None

    from veil.proxy.gateway import Gateway
    from veil.proxy.lifecycle import Stop
    from veil.proxy.transports import serve_http, serve_stdio

    if config.expose != "direct":  # what a Veil that died here left behind (veil/sandbox/reclaim.py)
        from veil.sandbox.reclaim import reclaim_stale

        reclaim_stale(config.data_dir / "workspaces")  # the gateway's workspace root

    async def main() -> None:
        # SIGTERM and SIGINT are Veil's from here on: the first stops taking requests and lets the
        # calls in flight finish (limits.shutdown_grace_s), then everything is closed and the
        # process exits 0 (veil.proxy.lifecycle, docs/deployment.md#stopping-and-faults).
        stop = Stop(config.limits.shutdown_grace_s)
        failed: list[Exception] = []  # raised after the signal watcher's task group, not in a group
        async with anyio.create_task_group() as signals:
            await signals.start(stop.watch)
            if early:
                stop.request(early[0])
            try:
                with anyio.CancelScope() as stop.scope:
                    await run(stop)
            except Exception as exc:
                failed.append(exc)
            finally:
                signals.cancel_scope.cancel()
        if failed:
            raise failed[0]
        if stop.draining:
            click.echo(f"veil: stopped ({stop.signal})", err=True)

    async def run(stop: Stop) -> None:
        if stop.draining:
            return
        async with Gateway(config) as gateway:
            stop.serving = True
            if stop.draining:  # a signal came as the start finished
                return
            if address:
                click.echo(f"veil: serving MCP on http://{address[0]}:{address[1]}/mcp", err=True)
                await serve_http(gateway, *address, stop=stop)
            else:
                await serve_stdio(gateway, stop=stop)

    # uvloop: the gateway is an event loop moving small messages between sockets and pipes, where
    # the standard loop's Python-level transports cost a large share of each call (bench/RESULTS.md).
    anyio.run(main, backend_options={"use_uvloop": True})
    # Everything is closed, flushed and audited: skip the interpreter's teardown of the NLP models
    # and the rest of the heap (measured: 5-8 s on a busy 2-core host, counted against Kubernetes'
    # grace period and a service manager's stop timeout).
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)
