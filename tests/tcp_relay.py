"""A loopback TCP port in front of a Unix socket, for third-party tools in tests.

The embedded PostgreSQL (tests without ``DATABASE_URL``) listens on a Unix socket only, and
dbhub reads a host and port from its DSN and nothing else (a ``host=/dir`` parameter is
ignored: it connected to whatever answered on 127.0.0.1:5432, or failed to start and every
dbhub test passed without reaching it). The relay copies bytes both ways, one thread per
connection, until either side closes.
"""

from __future__ import annotations

import selectors
import socket
import socketserver
import threading
from pathlib import Path
from types import TracebackType


class _Pump(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        with socket.socket(socket.AF_UNIX) as target, selectors.DefaultSelector() as sel:
            target.connect(str(self.server.target))
            sel.register(self.request, selectors.EVENT_READ, target)
            sel.register(target, selectors.EVENT_READ, self.request)
            while True:
                for key, _ in sel.select():
                    data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    target: Path


class TcpRelay:
    """``with TcpRelay(socket_path) as relay:`` 127.0.0.1:``relay.port`` reaches the socket."""

    def __init__(self, target: Path) -> None:
        self._server = _Server(("127.0.0.1", 0), _Pump)
        self._server.target = target
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="tcp-relay", daemon=True)

    def __enter__(self) -> TcpRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
