"""docs/operations.md's metric table is the registry: every exported metric is documented with its
type and labels, and nothing documented is missing from the registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from veil.ops.metrics import REGISTRY

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
ROW = re.compile(r"^\| `([a-z_*]+)` \| (\w+) \|([^|]*)\|", re.M)

pytestmark = pytest.mark.req("ops:docs")


def _documented() -> dict[str, tuple[str, set[str]]]:
    return {
        name: (kind, set(re.findall(r"`(\w+)`", labels)))
        for name, kind, labels in ROW.findall(DOC.read_text(encoding="utf-8"))
        if name.startswith(("veil_", "process_"))
    }


def _registered() -> dict[str, tuple[str, set[str]]]:
    """Exposed name -> (type, label names), from the metric objects and the collectors."""
    out: dict[str, tuple[str, set[str]]] = {}
    for collector in list(REGISTRY._collector_to_names):  # the registry has no public listing
        labelnames = set(getattr(collector, "_labelnames", ()))
        for family in collector.collect():
            name = family.name + ("_total" if family.type == "counter" else "")
            labels = labelnames or set(getattr(family, "_labelnames", ()))
            out[name] = (family.type, labels)
    return out


def test_every_metric_is_documented_with_its_type_and_labels() -> None:
    documented, registered = _documented(), _registered()
    ours = {k: v for k, v in registered.items() if k.startswith("veil_")}
    assert {k: v for k, v in documented.items() if k.startswith("veil_")} == ours
    assert "process_*" in documented and any(k.startswith("process_") for k in registered)
    assert set(registered) <= set(ours) | {k for k in registered if k.startswith("process_")}
