"""A test upstream that can be killed mid-call: ``hold`` writes the server's pid to
``$FRAGILE_STARTED`` and blocks (until the process is killed, or at most a minute); ``whoami``
answers with the pid. Before it blocks it writes a customer's e-mail address to stderr, as a
crashing server's traceback might: Veil must not pass that on."""

import os
import sys
import time
from pathlib import Path

from mcp.server.mcpserver import MCPServer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from examples._demo_common import serve

# A value the test looks for everywhere the agent, the logs and the audit trail could show it.
SECRET = "dying.customer.4711@example.com"


def build() -> MCPServer:
    mcp = MCPServer("fragile")

    @mcp.tool()
    def hold() -> str:
        """Block until the process is killed."""
        print(f"processing the order of {SECRET}", file=sys.stderr, flush=True)
        Path(os.environ["FRAGILE_STARTED"]).write_text(str(os.getpid()))
        time.sleep(60)
        return "held"

    @mcp.tool()
    def whoami() -> str:
        """The server's process id."""
        return f"pid {os.getpid()}"

    return mcp


if __name__ == "__main__":
    serve(build(), None, "Upstream to be killed mid-call (tests/faults).")
