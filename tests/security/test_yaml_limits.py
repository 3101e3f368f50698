"""Config and policy YAML are read with limits: an alias bomb, deep nesting or a huge file is
refused at once, with a message naming the file, before anything expands it.

The CLI cases run ``veil`` as a real subprocess and read that child's own peak memory (VmHWM) as
it exits (an alias bomb used to make ``veil policy lint`` grow to 4 GB)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from veil import yamlsafe
from veil.config import load_config
from veil.errors import ConfigError, PolicyError
from veil.policies.lint import lint_file
from veil.policies.loader import load_policy

ROOT = Path(__file__).resolve().parents[2]
PEAK_RSS_LIMIT_MB = 400  # the interpreter with Veil imported, far from the 4 GB an expansion takes


def alias_bomb(levels: int = 9) -> str:
    """The classic "billion laughs": 9 levels of 9 aliases = 9**9 (387 million) strings."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        prev, name = chr(96 + i), chr(97 + i)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


# The child reads its own high-water mark (VmHWM) at exit. Not ``os.wait4``'s ru_maxrss: Linux
# carries the parent's peak across fork and exec into it, so a child of a pytest process that has
# loaded spaCy "peaks" at the parent's 500 MB whatever it does itself.
_MEASURED = (
    "import atexit, os, runpy, sys\n"
    "def _peak():\n"
    "    with open('/proc/self/status') as status:\n"
    "        kib = next(int(line.split()[1]) for line in status if line.startswith('VmHWM:'))\n"
    "    with open(os.environ['VEIL_TEST_PEAK_FILE'], 'w') as out:\n"
    "        out.write(str(kib))\n"
    "atexit.register(_peak)\n"
    "sys.argv = ['veil', *sys.argv[1:]]\n"
    "runpy.run_module('veil', run_name='__main__', alter_sys=True)\n"
)


def run_veil(*args: str, cwd: Path) -> tuple[int, str, float]:
    """Run ``veil ARGS`` as a child; return (exit code, stdout+stderr, the child's own peak RSS in MB)."""
    peak_file = cwd / ".peak-rss-kib"
    proc = subprocess.Popen(
        [sys.executable, "-c", _MEASURED, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), "VEIL_TEST_PEAK_FILE": str(peak_file)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    guard = threading.Timer(120, proc.kill)  # a hang guard, not a timing assertion
    guard.start()
    try:
        out, _ = proc.communicate()
    finally:
        guard.cancel()
    assert peak_file.exists(), f"the child did not exit normally (exit {proc.returncode}); output: {out[-2000:]}"
    return proc.returncode, out, int(peak_file.read_text()) / 1024


@pytest.mark.req("config:yaml-limits")
def test_alias_bomb_in_a_policy_is_refused_by_lint_naming_the_file(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb-policy.yaml"
    bomb.write_text(alias_bomb())
    code, out, peak_mb = run_veil("policy", "lint", str(bomb), cwd=tmp_path)
    assert code != 0
    assert f"{bomb}:" in out and "alias bomb" in out, out
    assert peak_mb < PEAK_RSS_LIMIT_MB, f"veil policy lint grew to {peak_mb:.0f} MB on an alias bomb"


@pytest.mark.req("config:yaml-limits")
def test_alias_bomb_as_config_is_refused_by_serve_naming_the_file(tmp_path: Path) -> None:
    bomb = tmp_path / "veil.yaml"
    bomb.write_text(alias_bomb())
    code, out, peak_mb = run_veil("serve", "--config", str(bomb), cwd=tmp_path)
    assert code != 0
    assert f"{bomb}:" in out and "alias bomb" in out, out
    assert peak_mb < PEAK_RSS_LIMIT_MB, f"veil serve grew to {peak_mb:.0f} MB on an alias bomb"


@pytest.mark.req("config:yaml-limits")
def test_serve_with_a_config_whose_policy_is_an_alias_bomb_names_the_policy_file(
    tmp_path: Path, database_url: str
) -> None:
    policy = tmp_path / "bomb-policy.yaml"
    policy.write_text(alias_bomb())
    config = tmp_path / "veil.yaml"
    config.write_text(f"policy: {policy}\ndata_dir: {tmp_path / 'data'}\ndatabase_url: {database_url}\n")
    code, out, peak_mb = run_veil("serve", "--config", str(config), cwd=tmp_path)
    assert code != 0
    assert str(policy) in out, out
    assert peak_mb < PEAK_RSS_LIMIT_MB


@pytest.mark.req("config:yaml-limits")
@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("bomb", alias_bomb(), "alias bomb"),
        ("deep", "a: " + "[" * 200 + "]" * 200 + "\n", "nest deeper than"),
        ("recursive", "a: &x [1, *x]\n", "recursive"),
    ],
)
def test_limits_are_errors_naming_the_file_and_position(tmp_path: Path, name: str, text: str, expected: str) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as config_error:
        load_config(path)
    assert str(path) in config_error.value.message and expected in config_error.value.message
    with pytest.raises(PolicyError) as policy_error:
        load_policy(path)
    assert policy_error.value.file == str(path) and policy_error.value.line is not None
    assert expected in policy_error.value.message
    (problem,) = lint_file(str(path))
    assert problem.file == str(path) and expected in problem.message


@pytest.mark.req("config:yaml-limits")
def test_oversized_files_are_refused_without_being_read_whole(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("w") as fh:
        fh.write("values:\n")
        line = "  - " + "x" * 60 + "\n"
        fh.write(line * (yamlsafe.MAX_BYTES // len(line) + 10))
    with pytest.raises(ConfigError, match="larger than"):
        load_config(big)
    with pytest.raises(PolicyError, match="larger than") as refused:
        load_policy(big)
    assert refused.value.file == str(big)
    json_config = tmp_path / "big.json"
    json_config.write_text('{"upstreams": {}, "pad": "' + "x" * yamlsafe.MAX_BYTES + '"}')
    with pytest.raises(ConfigError, match="larger than"):
        load_config(json_config)


@pytest.mark.req("config:yaml-limits")
def test_ordinary_anchors_and_every_shipped_document_still_load(tmp_path: Path) -> None:
    # Reusing a small anchor is legitimate YAML and stays accepted.
    policy = tmp_path / "anchors.yaml"
    policy.write_text(
        "metadata: {name: anchors, purposes: [testing]}\n"
        "access:\n"
        "  - {id: a, tools: &crm ['crm__*'], roles: [support], effect: allow}\n"
        "  - {id: b, tools: *crm, roles: [supervisor], effect: allow}\n"
    )
    loaded = load_policy(policy)
    assert [r.id for r in loaded.access or []] == ["a", "b"]
    for path in sorted((ROOT / "policies").glob("*.yaml")):
        load_policy(path)
    for path in (ROOT / "examples" / "veil.yaml", ROOT / "examples" / "mcp.json"):
        load_config(path)


def test_check_counts_expanded_nodes_exactly() -> None:
    # 1 root mapping + key "a" + list(1) + 3 scalars + key "b" + alias (4 nodes) = 11
    yamlsafe.check("a: &x [1, 2, 3]\nb: *x\n", max_nodes=11)
    with pytest.raises(yamlsafe.YamlLimitError):
        yamlsafe.check("a: &x [1, 2, 3]\nb: *x\n", max_nodes=10)
    # Syntax errors are left to the real loader, which reports them with a position.
    yamlsafe.check("a: [1, 2\n")
