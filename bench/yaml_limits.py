"""How fast a YAML alias bomb is refused, side by side with the unguarded loader it replaced.

    python bench/yaml_limits.py

The guarded path is ``load_policy`` on the full "billion laughs" (9 levels of 9 aliases, 9**9
strings once expanded): it must refuse at once. The baseline is the policy loader's positioned
YAML builder without the limits (``yamlmarks.load_yaml``, what ``load_policy`` ran before), on
smaller bombs of 5 and 6 levels, since the full one took 38 s and 4 GB. Medians of 5 runs; the
baseline grows 9x per level, so its time for 9 levels is extrapolated, not run.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from veil.errors import PolicyError
from veil.policies.loader import load_policy
from veil.policies.yamlmarks import load_yaml


def bomb(levels: int) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        prev, name = chr(96 + i), chr(97 + i)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def median_s(fn, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bomb.yaml"
        path.write_text(bomb(9))

        def guarded() -> None:
            try:
                load_policy(path)
            except PolicyError:
                return
            raise AssertionError("the bomb was not refused")

        refused = median_s(guarded)
    print(f"guarded load_policy, 9-level bomb (9**9 strings): refused in {refused * 1000:.1f} ms (median of 5)")
    for levels in (5, 6):
        text = bomb(levels)
        took = median_s(lambda text=text: load_yaml(text, "bomb.yaml"), runs=3 if levels == 6 else 5)
        print(
            f"unguarded yamlmarks.load_yaml, {levels}-level bomb (9**{levels} = {9**levels:,} strings): "
            f"{took * 1000:.0f} ms; 9 levels extrapolated: {took * 9 ** (9 - levels):.0f} s"
        )


if __name__ == "__main__":
    main()
