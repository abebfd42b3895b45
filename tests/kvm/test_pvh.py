#!/usr/bin/env python3
"""KVM integration: the test guest's PVH entry, booted by QEMU's microvm machine the way
tools/bench-peers boots it (mitos-vmm itself uses the Linux boot protocol entry, which
the other kvm suites cover).

usage: test_pvh.py MITOS_VMM TESTGUEST_ELF TESTGUEST_MKDISK   (only the ELF is used)

Exits 77 (meson's "skipped") when this host has no usable /dev/kvm or no
qemu-system-x86_64: QEMU is a benchmark peer, installed by tools/bench-peers, not by
tools/setup.
"""
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "pylib"))
import mitosvm  # noqa: E402
from qemuvm import QEMU, FirstByte, microvm_args  # noqa: E402

TESTGUEST = sys.argv[2]
# isa-debug-exit: QEMU exits with (code << 1) | 1, and PASS is 0. QEMU's own errors exit
# 1 too, so every case also wants the guest's PASS line.
PASS_STATUS = 1
case = mitosvm.Cases()


def boot(cmdline, post=None):
    return mitosvm.VM(QEMU, microvm_args(TESTGUEST, 64, cmdline, post)[1:])


def mode_none(tmp):
    vm = boot("testguest.mode=none")
    ok = vm.wait_for(r"testguest: PASS", 120) is not None
    rc, err = vm.finish(60)
    out = "\n".join(vm.seen)
    case("pvh: mode none reaches PASS and exits through the debug-exit port",
         ok and rc == PASS_STATUS, f"exit {rc}\n{out}\n{err}")
    case("pvh: the command line arrives through hvm_start_info",
         "cmdline: testguest.mode=none" in out, out)


def mode_snap(tmp):
    post = FirstByte(os.path.join(tmp, "post.sock"))
    vm = boot("testguest.mode=snap", post.path)
    ready = vm.wait_for(r"snap mode: .* ticking", 120) is not None
    ticks = ready and vm.wait_for(r"tick 1 counter 50", 120) is not None
    case("pvh: long mode with LAPIC and IOAPIC interrupts (snap mode ticks)", ticks,
         "\n".join(vm.seen))
    if not ticks:
        vm.p.kill()
        vm.finish()
        post.close()
        return
    vm.send("q")
    ok = vm.wait_for(r"testguest: PASS", 60) is not None
    rc, err = vm.finish(60)
    case("pvh: snap mode quits with PASS", ok and rc == PASS_STATUS, f"exit {rc}\n{err}")
    first = post.wait(5)
    post.close()
    case("pvh: the first instruction is the outb to port 0x80", first is not None)


def main():
    if not shutil.which(QEMU):
        print(f"SKIP: no {QEMU} (tools/bench-peers installs qemu-system-x86)")
        return 77
    return mitosvm.run_kvm_suite(case, "mitos-pvh-", mode_none, mode_snap,
                                 skip_note="; the PVH suite boots under KVM")


if __name__ == "__main__":
    sys.exit(main())
