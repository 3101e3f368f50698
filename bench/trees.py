"""Which checkout a benchmark's Veil subprocess runs, checked rather than assumed.

``python -m veil`` and ``python -c`` put their working directory first on ``sys.path``, ahead of
``PYTHONPATH``, and the editable install points at the main checkout. A baseline tree named only
by ``PYTHONPATH`` while the benchmark runs from the main checkout therefore runs the main
checkout's code: a before/after that compares a tree with itself (found on 2026-11-29; the
comparisons recorded before that in RESULTS.md say so). A subprocess started with
``python_env(tree)`` runs with ``tree`` as both its ``PYTHONPATH`` and its working directory, and
``python_env`` fails unless ``import veil`` there really resolves into ``tree``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def python_env(tree: Path, env: dict[str, str] | None = None) -> tuple[dict[str, str], Path]:
    """(environment, working directory) under which ``sys.executable`` imports Veil from ``tree``."""
    tree = tree.resolve()
    env = {**(os.environ if env is None else env), "PYTHONPATH": str(tree)}
    found = subprocess.run(
        [sys.executable, "-c", "import veil; print(veil.__file__)"],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(tree):
        raise SystemExit(f"a Veil started for {tree} would import {found}: fix the checkout or PYTHONPATH first")
    return env, tree


def run_for_json(args: list[str], where: tuple[dict[str, str], Path]) -> Any:
    """``sys.executable *args`` run under ``where`` (``python_env``'s answer): its last line of
    output, which the benchmarks' child processes print as their JSON report."""
    env, cwd = where
    out = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])
