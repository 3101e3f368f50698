"""The sandbox on a cgroup v2 kernel, booted in a guest from this machine's own files.

This machine and CI are cgroup v1 hosts, so every other test with real sandboxes exercises the v1
path of ``veil/sandbox/cgroup.py``; Kubernetes nodes and systemd hosts of today are cgroup v2.
``tests/kernel_vm.py`` boots Debian's kernel under QEMU with only the unified hierarchy mounted
and runs pytest there, on this checkout and this venv, in three places a gateway is started from:

* ``root``: Veil in the root group (a VM or bare host started by hand);
* ``delegated``: Veil in ``/veil.service``, a group that holds processes and was given ``pids``
  and ``memory`` by its parent (systemd's ``Delegate=``): the kernel refuses to hand controllers
  down from it until Veil moves into its leaf;
* ``namespace``: the same group seen through a private cgroup namespace with cgroupfs mounted
  afresh, as a container runtime shows it (``/proc/self/cgroup`` says ``/``).

The guest runs ``tests/sandbox/test_cgroup_v2_real.py`` in each, and the containment attacks of
``tests/sandbox/test_containment.py`` (memory through /dev/shm, /tmp and SysV shared memory,
fork bombs, escapes from the wall clock, forged completions) in the container layout. The test
here reads the guest's JUnit report: every test ran (none skipped) and passed.
"""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from kernel_vm import PLACEMENTS, KernelVM

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "apt-get install qemu-system-x86 linux-image-amd64 busybox-static cpio"
GUEST_TESTS = {
    "root": ["tests/sandbox/test_cgroup_v2_real.py"],
    "delegated": ["tests/sandbox/test_cgroup_v2_real.py"],
    "namespace": ["tests/sandbox/test_cgroup_v2_real.py", "tests/sandbox/test_containment.py"],
}


@pytest.fixture(scope="module")
def vm() -> KernelVM:
    if os.environ.get("VEIL_VM_LAYOUT"):
        pytest.skip("already inside the guest")
    if os.geteuid() != 0:
        pytest.skip("the guest's sandboxes start as the 'veil-sandbox' user, which needs root")
    found = KernelVM.find()
    if found is None:
        message = f"no QEMU, Debian kernel or static busybox to boot a cgroup v2 guest: {INSTALL}"
        if os.environ.get("CI"):  # .ci/run installs them: missing there is a broken install, not a skip
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.mark.req("sandbox:cgroup-v2")
@pytest.mark.parametrize("layout", PLACEMENTS)
def test_sandbox_limits_hold_on_a_cgroup_v2_kernel(vm: KernelVM, layout: str, tmp_path: Path) -> None:
    report = "/veil-vm-out/junit.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    result = vm.run(
        [*command, *GUEST_TESTS[layout]],
        out=tmp_path,
        cwd=ROOT,
        env={"PYTHONDONTWRITEBYTECODE": "1", "VEIL_VM_LAYOUT": layout},
        timeout_s=1200,
        **PLACEMENTS[layout],
    )
    where = f"guest output:\n{result.output[-4000:]}\nconsole:\n{result.console[-3000:]}"
    assert result.returncode is not None, f"the guest did not finish; {where}"
    assert "/sys/fs/cgroup is cgroup2fs" in result.console, where
    junit = tmp_path / "junit.xml"
    assert junit.exists(), where
    root = ET.parse(junit).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None, where
    counts = {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")}
    cases = {case.get("classname", "").rsplit(".", 1)[-1] for case in suite.iter("testcase")}
    assert counts["failures"] == counts["errors"] == counts["skipped"] == 0, f"{counts}; {where}"
    assert {Path(f).stem for f in GUEST_TESTS[layout]} <= cases and counts["tests"] >= 3, f"{counts}; {where}"
    assert result.returncode == 0, where
