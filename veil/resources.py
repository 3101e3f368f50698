"""Where Veil's shipped folders are: ``migrations/``, ``policies/`` and ``examples/``.

They live at the top of the source tree, where users look for them, and are shipped inside the
wheel as package data under ``veil/_data/`` (``package-dir`` in pyproject.toml). They are found
with :mod:`importlib.resources`, so an installed Veil never depends on a source checkout; in a
source checkout (or an editable install) ``veil/_data/`` does not exist and the top-level
folders are used instead.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

Shipped = Literal["migrations", "policies", "examples"]

_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def shipped_dir(name: Shipped) -> Path:
    """The folder ``name`` as a real directory (Alembic and the demo upstreams need file paths)."""
    packaged = resources.files("veil").joinpath("_data", name)
    if packaged.is_dir():
        # A wheel installs as plain files, so the traversable is a filesystem path.
        return Path(str(packaged))
    source = _SOURCE_ROOT / name
    if source.is_dir():
        return source
    raise FileNotFoundError(
        f"Veil's {name}/ folder is missing from both the installed package ({packaged}) and the source "
        f"tree ({source}); reinstall Veil (pip install veil or pip install .)"
    )


def shipped_file(name: Shipped, *parts: str) -> Path:
    """A file inside a shipped folder, e.g. ``shipped_file("policies", "default.yaml")``."""
    return shipped_dir(name).joinpath(*parts)
