"""Run a command on this machine's own files under another kernel: a KVM guest booted with
Debian's kernel and a unified (v2-only) cgroup hierarchy.

Why: the sandbox's cgroup v2 path (``veil/sandbox/cgroup.py``) is what modern Kubernetes nodes
and systemd hosts use, but this machine and CI are cgroup v1 hosts, where a real v2 memory
controller cannot be had (the v1 hierarchy holds it). A guest kernel can have one. The guest sees
the host's root filesystem read-only over 9p (virtio), under a tmpfs overlay so that what the
command writes (``/etc/passwd`` for the sandbox user, workspaces) stays in the guest; the
directory ``out`` is shared writable for results. Nothing is built or downloaded: the kernel and
its modules come from Debian's ``linux-image-amd64``, the init from ``busybox-static``, and the
guest's network is QEMU's user-mode one (the host's loopback is 10.0.2.2 in the guest), so a
test inside can reach the host's PostgreSQL.

    vm = KernelVM.find()                     # None when KVM, QEMU or a kernel is missing
    result = vm.run(["python3", "-c", "print(1)"], out=tmp_path, env={"A": "1"})
    result.returncode, result.console
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QEMU = "qemu-system-x86_64"
BUSYBOX = Path("/bin/busybox")
# What the initramfs loads to mount the host's root: virtio PCI, 9p over virtio, overlayfs.
EARLY_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
# What the guest loads from the host's /lib/modules once it runs there (network, sandbox filesystems).
LATE_MODULES = ("virtio_net", "loop", "ext4")

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod "/modules/$m" || echo "veil-vm: insmod $m failed"; done
mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /lower || exec sh
mount -t tmpfs -o size=4g,mode=755 rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot || exec sh
cp /stage2 /newroot/veil-vm-stage2
chmod 755 /newroot/veil-vm-stage2
# The host's /proc, /sys and /dev show through 9p as the QEMU process sees them (its
# /proc/self is QEMU): the guest's own go over them before anything runs there.
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
exec switch_root /newroot /bin/sh /veil-vm-stage2
"""

STAGE2 = r"""
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
mkdir -p /dev/pts /dev/shm /veil-vm-out
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
# /tmp stays the host's, under the overlay: a checkout or venv there (a CI clone) must be seen
mount -t tmpfs -o mode=755 tmpfs /run
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 veilout /veil-vm-out
for m in {late}; do modprobe "$m"; done
hostname veil-vm
busybox ip link set lo up
busybox ip link set eth0 up && busybox ip addr add 10.0.2.15/24 dev eth0 && busybox ip route add default via 10.0.2.2
echo "veil-vm: kernel $(uname -r), /sys/fs/cgroup is $(stat -fc %T /sys/fs/cgroup)"
{enter_group}
cd {cwd}
{env} {command} > /veil-vm-out/output 2>&1
echo $? > /veil-vm-out/returncode
sync
echo o > /proc/sysrq-trigger
"""
# Where the command starts, as a gateway is started: in the root group (a VM or host started by
# hand), in a group holding processes that its parent gave controllers (systemd's Delegate=), or
# that group seen through a private cgroup namespace with cgroupfs mounted afresh (a container).
PLACEMENTS: dict[str, dict[str, Any]] = {
    "root": {},
    "delegated": {"group": "veil.service"},
    "namespace": {"group": "veil.service", "cgroup_namespace": True},
}


@dataclass
class VMResult:
    returncode: int | None  # None: the command never finished (the guest did not boot, or hung)
    output: str  # what the command printed (stdout and stderr)
    console: str  # the guest's serial console: kernel messages and the init's own lines


@dataclass
class KernelVM:
    kernel: Path
    modules: Path  # /lib/modules/<version> of that kernel

    @classmethod
    def find(cls) -> KernelVM | None:
        """The newest Debian kernel in /boot with its modules, if KVM and QEMU are usable."""
        if shutil.which(QEMU) is None or not BUSYBOX.exists():
            return None
        for kernel in sorted(Path("/boot").glob("vmlinuz-*"), reverse=True):
            modules = Path("/lib/modules") / kernel.name.removeprefix("vmlinuz-")
            if (modules / "modules.dep").exists():
                return cls(kernel, modules)
        return None

    def _load_order(self, names: tuple[str, ...]) -> list[Path]:
        """Module files for ``names`` and what they depend on, dependencies first (modules.dep)."""
        deps: dict[str, list[str]] = {}
        by_name: dict[str, str] = {}
        for line in (self.modules / "modules.dep").read_text().splitlines():
            path, _, rest = line.partition(":")
            deps[path] = rest.split()
            by_name[Path(path).name.split(".ko")[0].replace("-", "_")] = path
        order: list[str] = []

        def visit(path: str) -> None:
            for dep in deps.get(path, []):
                visit(dep)
            if path not in order:
                order.append(path)

        for name in names:
            if name not in by_name:
                raise FileNotFoundError(f"kernel module {name} is not in {self.modules}/modules.dep")
            visit(by_name[name])
        return [self.modules / p for p in order]

    def _initramfs(self, workdir: Path, stage2: str) -> Path:
        tree = workdir / "initramfs"
        for sub in ("bin", "modules", "proc", "dev", "sys"):
            (tree / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUSYBOX, tree / "bin" / "busybox")
        order = []
        for module in self._load_order(EARLY_MODULES):
            shutil.copy2(module, tree / "modules" / module.name)
            order.append(module.name)
        (tree / "modules.order").write_text("\n".join(order) + "\n")
        (tree / "init").write_text(INIT)
        (tree / "init").chmod(0o755)
        (tree / "stage2").write_text(stage2)
        image = workdir / "initramfs.cpio"
        files = subprocess.run(["find", "."], cwd=tree, check=True, capture_output=True, text=True).stdout
        with image.open("wb") as sink:
            subprocess.run(
                ["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, input=files.encode(), stdout=sink, check=True
            )
        return image

    def run(
        self,
        command: list[str],
        *,
        out: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        group: str | None = None,
        cgroup_namespace: bool = False,
        memory_mb: int = 3072,
        timeout_s: float = 900,
    ) -> VMResult:
        """Boot, run ``command`` as root in ``cwd`` (default: this one) with ``env`` added, power
        off. ``out`` (created) is the guest's /veil-vm-out, writable; its ``output`` holds what the
        command printed.

        ``group``: run it in that cgroup below the root (``pids`` and ``memory`` enabled for it),
        as systemd runs a service with ``Delegate=``, rather than in the root group, which the
        kernel exempts from the rule that a group with processes cannot give its children
        controllers. ``cgroup_namespace``: also in a private cgroup namespace with cgroupfs
        mounted afresh, as a container runtime runs it (``/proc/self/cgroup`` then says ``/``)."""
        out.mkdir(parents=True, exist_ok=True)
        work = out / ".vm"
        work.mkdir(exist_ok=True)
        enter = ""
        if group:
            enter = (
                'echo "+pids +memory" > /sys/fs/cgroup/cgroup.subtree_control\n'
                f"mkdir -p /sys/fs/cgroup/{group}\n"
                f"echo $$ > /sys/fs/cgroup/{group}/cgroup.procs\n"
            )
        if cgroup_namespace:
            command = [
                "unshare", "--cgroup", "--mount", "--propagation", "private", "--",
                "sh", "-c", 'umount /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec "$@"', "sh",
                *command,
            ]  # fmt: skip
        stage2 = STAGE2.format(
            enter_group=enter,
            late=" ".join(LATE_MODULES),
            cwd=shlex.quote(str(cwd or Path.cwd())),
            env="env " + " ".join(shlex.quote(f"{k}={v}") for k, v in (env or {}).items()) if env else "",
            command=" ".join(shlex.quote(part) for part in command),
        )
        image = self._initramfs(work, stage2)
        console = work / "console.log"
        qemu = [
            QEMU,
            "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", str(os.cpu_count() or 1), "-m", str(memory_mb),
            "-kernel", str(self.kernel), "-initrd", str(image),
            "-append", "console=ttyS0 panic=-1 quiet systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all",
            "-fsdev", "local,id=hostroot,path=/,security_model=passthrough,readonly=on,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
            "-fsdev", f"local,id=veilout,path={out},security_model=passthrough,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=veilout,mount_tag=veilout",
            "-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0",
            "-nographic", "-no-reboot", "-serial", f"file:{console}", "-monitor", "none",
        ]  # fmt: skip
        for stale in ("output", "returncode"):
            (out / stale).unlink(missing_ok=True)
        with contextlib.suppress(subprocess.TimeoutExpired):  # a hung guest: returncode None says so
            subprocess.run(qemu, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, check=False)
        code = out / "returncode"
        text = code.read_text().strip() if code.exists() else ""
        output = out / "output"
        return VMResult(
            returncode=int(text) if text.isdigit() else None,
            output=output.read_text(errors="replace") if output.exists() else "",
            console=console.read_text(errors="replace") if console.exists() else "",
        )


def main(argv: list[str] | None = None) -> int:
    """Run pytest in the guest: ``python tests/kernel_vm.py --layout namespace -- tests/sandbox``."""
    import argparse
    import sys
    import tempfile

    from sqlalchemy.engine import make_url

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--layout", choices=sorted(PLACEMENTS), default="namespace")
    parser.add_argument("--memory-mb", type=int, default=3072)
    parser.add_argument("pytest_args", nargs="*", default=["tests/sandbox"])
    args = parser.parse_args(argv)
    vm = KernelVM.find()
    if vm is None:
        print("no QEMU, Debian kernel or static busybox: apt-get install qemu-system-x86 linux-image-amd64 "
              "busybox-static cpio", file=sys.stderr)  # fmt: skip
        return 2
    env = {"PYTHONDONTWRITEBYTECODE": "1", "VEIL_VM_LAYOUT": args.layout}
    if url := os.environ.get("DATABASE_URL"):  # the host's loopback is 10.0.2.2 in the guest
        parsed = make_url(url)
        if parsed.host in ("127.0.0.1", "localhost"):
            parsed = parsed.set(host="10.0.2.2")
        env["DATABASE_URL"] = parsed.render_as_string(hide_password=False)
    placement = PLACEMENTS[args.layout]
    with tempfile.TemporaryDirectory(prefix="veil-vm-") as out:
        result = vm.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args.pytest_args],
            out=Path(out),
            env=env,
            memory_mb=args.memory_mb,
            timeout_s=3600,
            **placement,
        )
    print(result.output, end="")
    if result.returncode is None:
        print(f"the guest did not finish; its console:\n{result.console[-4000:]}", file=sys.stderr)
        return 2
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
