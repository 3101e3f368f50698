"""What the runner's operations hook (veil/ops/observe.py) adds per message: nine stage timings,
one call count, the call histogram, entity counts and the upstream state, with tracing off (the
default). Side by side in one process, alternating: the runner's stage loop over a flow without
the hook (baseline) and with it. Median CPU time per flow (the machine is shared; wall time would
measure the neighbours). No database or upstream: the hook's own cost, which is what it adds to
every call whatever the stages do.

    .venv/bin/python bench/ops_overhead.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from veil.ops.observe import observe  # noqa: E402
from veil.proxy.flow import Flow, Target  # noqa: E402
from veil.proxy.runner import AGENT_STAGES  # noqa: E402

STAGES = [stage.name for stage in AGENT_STAGES]


class _Gateway:
    """What the hook reads from a gateway: the configured upstreams and their prefixes."""

    config = SimpleNamespace(upstreams={"crm": None}, prefixes=lambda: {"crm": "crm__"})


def _flow() -> Flow:
    flow = Flow(method="tools/call", origin="agent", target=Target("tool", "crm", "get_customer", "call"))
    flow.entities = {"EMAIL_ADDRESS": 1, "PERSON": 2, "PHONE_NUMBER": 1}
    return flow


def baseline(gw: Any) -> None:
    flow = _flow()
    for _ in STAGES:
        pass
    del flow


def hooked(gw: Any) -> None:
    flow = _flow()
    watch = observe(gw, flow)
    for name in STAGES:
        with watch.stage(name):
            pass
    watch.done()


def main(rounds: int = 15, per_round: int = 20000) -> None:
    gw = _Gateway()
    samples: dict[str, list[float]] = {"baseline": [], "hooked": []}
    for fn in (baseline, hooked):
        for _ in range(2000):
            fn(gw)  # warm: label children resolved, code paths hot
    for _ in range(rounds):
        for name, fn in (("baseline", baseline), ("hooked", hooked)):
            start = time.process_time()
            for _ in range(per_round):
                fn(gw)
            samples[name].append((time.process_time() - start) / per_round * 1e6)
    base, hook = statistics.median(samples["baseline"]), statistics.median(samples["hooked"])
    print(f"stages per flow: {len(STAGES)}; {rounds} rounds of {per_round} flows, alternating; median CPU per flow")
    print(f"  baseline (stage loop, no hook): {base:.2f} us")
    print(f"  with the ops hook:              {hook:.2f} us")
    print(f"  added:                          {hook - base:.2f} us")


if __name__ == "__main__":
    main()
