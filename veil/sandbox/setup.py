"""``python -m veil.sandbox.setup [--user NAME]``: create the sandbox user once per machine (root).

The logic lives in ``veil.sandbox.user``; this module is only the command, so running it with
``-m`` does not re-import a module the package already loaded.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from veil.errors import SandboxError
from veil.sandbox.user import ensure_sandbox_user


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create the user Veil's code sandboxes run as.")
    parser.add_argument("--user", default="veil-sandbox")
    args = parser.parse_args(argv)
    try:
        entry = ensure_sandbox_user(args.user)
    except (SandboxError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"sandbox user {entry.pw_name} (uid {entry.pw_uid}) is ready; home {entry.pw_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
