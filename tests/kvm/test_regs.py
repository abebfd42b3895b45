#!/usr/bin/env python3
"""KVM integration: a restored child continues with exactly the CPU state its snapshot
caught (firmware/testguest/regs.c says which registers and how).

usage: test_regs.py MITOS_VMM TESTGUEST_ELF TESTGUEST_MKDISK

The test guest's regs mode loads distinct patterns into every register it reaches,
arms the TSC-deadline timer, leaves a self-IPI pending and spins, printing
"regs: holding"; a 'c' on its serial port makes it compare everything and print
"regs: <n> checks, <k> differ" (exit 0 only when k is 0). Checked here: the parent
itself after its snapshot, children of the snapshot, children of a running fork (a
layer snapshotted from a restored child that is still spinning), and the child at the
end of a chain of three layers; with one vCPU and with two. With two the guest starts
its second CPU (INIT/SIPI, firmware/testguest/smp.c), which loads its own patterns into
its general, segment, control and debug registers, MSRs, x87 and SSE state and spins
with them live while the snapshots are taken; after 'c' it checks them too, and the
count in the last line covers both CPUs.

Where the CPU has XSAVE and AVX the guest checks YMM through XSAVE64/XRSTOR64 too
(on emulation-only KVM both run in the VMM's emulation assist); it says when it cannot.
Exits 77 without /dev/kvm.
"""
import functools
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "pylib"))
import mitosvm  # noqa: E402
from mitosvm import wait_for_socket  # noqa: E402

VMM, TESTGUEST = sys.argv[1:3]
VM = functools.partial(mitosvm.VM, VMM)
case = mitosvm.Cases()
DONE = r"regs: (\d+) checks, (\d+) differ"


def main():
    return mitosvm.run_kvm_suite(case, "mitos-regs-", run_cases)


def snapshot_of(vm, out):
    r = subprocess.run([VMM, "snapshot", "--control", vm.control, "--out", out],
                       capture_output=True, timeout=120)
    return r.returncode == 0, r.stdout.decode() + r.stderr.decode()


def restore(tmp, snap, name):
    ctl = os.path.join(tmp, f"{name}.sock")
    vm = VM(["restore", "--snapshot", snap, "--control", ctl], ctl)
    wait_for_socket(ctl)
    return vm


def verify(vm, who, vcpus):
    """Sends 'c' and checks that every register came back (on every CPU)."""
    vm.send("c")
    m = vm.wait_for(DONE, timeout=120)
    vm.drain()
    rc, err = vm.finish(timeout=60)
    case(f"{who}: every register as loaded ({m.group(1) if m else '?'} checks)",
         m is not None and m.group(2) == "0" and int(m.group(1)) >= 70 * vcpus and rc == 0,
         "\n".join(vm.seen[-30:]) + f"\nexit {rc} {err}")


def run_cases(tmp):
    for vcpus in (1, 2):
        run_shape(tmp, vcpus)


def run_shape(tmp, vcpus):
    tag = f"{vcpus} vCPU{'s' if vcpus > 1 else ''}"
    d = os.path.join(tmp, f"v{vcpus}")
    os.mkdir(d)
    ctl = os.path.join(d, "parent.sock")
    parent = VM(["run", "--kernel", TESTGUEST, "--mem", "64", "--vcpus", str(vcpus), "--control", ctl,
                 "--cmdline", "testguest.mode=regs"], ctl)
    held = parent.wait_for(rf"regs: holding, .*, {vcpus} CPUs?,", timeout=120)
    if held:
        print(held.string, flush=True)
    case(f"{tag}: parent loads its registers (on every CPU) and holds them", held is not None,
         "\n".join(parent.seen))
    if not held:
        parent.finish()
        return
    base = os.path.join(d, "base")
    ok, out = snapshot_of(parent, base)
    case(f"{tag}: snapshot of the holding guest", ok, out)
    verify(parent, f"{tag}: the parent after its snapshot", vcpus)
    if not ok:
        return

    for i in range(2):
        verify(restore(d, base, f"child{i}"), f"{tag}: child {i} of the snapshot", vcpus)

    # A running fork: a child that still holds its registers is snapshotted as a layer,
    # and so on three deep; children of the first layer and of the last must match.
    snaps = [base]
    for depth in (1, 2, 3):
        vm = restore(d, snaps[-1], f"l{depth}")
        layer = os.path.join(d, f"layer{depth}")
        ok, out = snapshot_of(vm, layer)
        case(f"{tag}: layer {depth} snapshotted from a running child", ok, out)
        vm.call({"cmd": "stop"})
        vm.finish()
        if not ok:
            return
        snaps.append(layer)
    verify(restore(d, snaps[1], "fork-child"), f"{tag}: child of a running fork", vcpus)
    verify(restore(d, snaps[3], "chain-child"), f"{tag}: child at the end of a 3-layer chain", vcpus)


if __name__ == "__main__":
    sys.exit(main())
