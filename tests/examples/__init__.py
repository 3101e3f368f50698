"""Tests of the demo upstreams, and ``upstreams``: helpers to start them from any test suite.

``tests/`` is on ``sys.path`` during a pytest session, so this package imports as ``examples``.
Its search path is extended with the repository's ``examples/`` folder so that, inside tests,
``examples.crm_data`` and ``examples.crm_server`` name the demo modules themselves, next to
``examples.upstreams``.
"""

from __future__ import annotations

from pathlib import Path

_DEMO_DIR = str(Path(__file__).resolve().parents[2] / "examples")
if _DEMO_DIR not in __path__:
    __path__.append(_DEMO_DIR)
