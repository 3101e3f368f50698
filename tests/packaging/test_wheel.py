"""The built wheel works on its own: installed into a fresh virtualenv, run from a directory that
is not the source checkout, ``veil db upgrade`` migrates a fresh database and ``veil demo`` runs.

Offline and fast: the wheel is built without build isolation (setuptools is pinned in the dev
extra), installed with ``--no-deps --no-index``, and the fresh venv reaches the dependencies of
the venv running the tests through a ``.pth`` line (a ``.pth`` line adds a directory to
``sys.path`` without running that directory's own ``.pth`` files, so an editable Veil installed
there cannot shadow the wheel). The demo runs on ``DATABASE_URL`` (``--database-url``), like the
rest of the suite; the embedded path is covered by tests/packaging/test_embedded.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from veil import db

ROOT = Path(__file__).resolve().parents[2]
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".veil", ".*_cache")


@pytest.fixture
def outside_dir() -> Iterator[Path]:
    """A working directory that is not the source checkout, traversable by the sandbox user."""
    path = Path(tempfile.mkdtemp(prefix="veil-user-"))
    path.chmod(0o711)  # the sandbox user walks to its workspace under here
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def user_env() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH pointing into the source tree."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VEIL_DATABASE_URL", "DATABASE_URL"}}
    return env


@pytest.fixture
def empty_database(server_url: str) -> Iterator[Callable[[], str]]:
    """Factory: a new database with nothing in it (not migrated), dropped afterwards."""
    admin = sa.create_engine(db.normalise_url(server_url), isolation_level="AUTOCOMMIT")
    created: list[str] = []

    def make() -> str:
        name = f"veil_pkg_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return make_url(db.normalise_url(server_url)).set(database=name).render_as_string(hide_password=False)

    yield make
    with admin.connect() as conn:
        for name in created:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src") / "veil"
    shutil.copytree(ROOT, src, ignore=SKIP)  # build from a copy: the checkout stays clean
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", out, src],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (built,) = out.glob("veil-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path) -> Iterator[Path]:
    target = Path(tempfile.mkdtemp(prefix="veil-venv-"))
    target.chmod(0o755)  # the sandbox user may run this venv's python
    try:
        yield _install(wheel, target)
    finally:
        shutil.rmtree(target, ignore_errors=True)


def _install(wheel: Path, target: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", target], check=True, timeout=120)
    python = target / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "shared_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},  # else pip sees the checkout's veil
        check=True,
        timeout=300,
        capture_output=True,
    )
    return target


def run(venv: Path, args: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [venv / "bin" / "veil", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.req("packaging:wheel")
def test_wheel_holds_every_module_and_the_shipped_folders(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    source_modules = {str(p.relative_to(ROOT)) for p in (ROOT / "veil").rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(source_modules - names)
    assert missing == [], f"add the package of {missing[0] if missing else ''} to [tool.setuptools] packages"
    for folder in ("migrations", "policies", "examples"):
        shipped = {
            str(p.relative_to(ROOT))
            for p in (ROOT / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix in {".py", ".yaml", ".json", ".md", ".mako"}
        }
        assert shipped, folder
        absent = sorted(s for s in shipped if f"veil/_data/{s}" not in names)
        assert absent == [], f"{folder}/ files missing from the wheel: {absent}"


@pytest.mark.req("packaging:wheel")
def test_installed_wheel_migrates_a_fresh_database_and_runs_the_demo_outside_the_checkout(
    venv: Path, outside_dir: Path, user_env: dict[str, str], empty_database: Callable[[], str]
) -> None:
    where = subprocess.run(
        [venv / "bin" / "python", "-c", "import veil, veil.db; print(veil.__file__); print(veil.db.MIGRATIONS_DIR)"],
        cwd=outside_dir,
        env=user_env,
        capture_output=True,
        text=True,
    )
    assert where.returncode == 0, where.stderr[-2000:]
    lines = where.stdout.split()
    assert all(line.startswith(str(venv)) for line in lines), lines  # the wheel, not the checkout

    url = empty_database()
    upgraded = run(venv, ["db", "upgrade", "--database-url", url], outside_dir, user_env)
    assert upgraded.returncode == 0, upgraded.stderr[-2000:]
    assert f"at revision {db.head_revision()}" in upgraded.stdout

    demo = run(venv, ["demo", "--database-url", empty_database()], outside_dir, user_env)
    assert demo.returncode == 0, demo.stderr[-3000:]
    out = demo.stdout
    assert "[EMAIL_ADDRESS_1]" in out and "mailer upstream received (real values)" in out
    assert "400 customers exported" in out  # execute_code ran in the sandbox
    assert str(venv) in out  # the bundled config and policy came from the installed package
    assert (outside_dir / ".veil" / "mailer-outbox.jsonl").exists()  # call logs in ./.veil, not site-packages
    assert not (ROOT / ".veil" / "demo.veil.yaml").exists()
