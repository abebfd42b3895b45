"""Time budgets of the test cases, derived from this machine instead of tuned to one run.

A case states what it costs in two parts: seconds of work that run at hardware speed
anywhere, and millions of guest-kernel instructions, which is what dominates where KVM
only emulates guest kernel code (`mitos-vmm check` measures that rate: about a million
instructions a second on an emulation-only host, thousands of millions on hardware).
The budget is the time this machine should take, times a margin, stretched by the load
average (a busy machine runs guests slower). Stdlib only."""
import json
import os
import subprocess

MARGIN = 4.0
HARDWARE_MIPS = 1000.0  # a floor for hardware KVM: guest kernel code runs natively

_check = {}


def check(vmm):
    """What `mitos-vmm check --json` says of this host (asked once per process)."""
    if vmm not in _check:
        r = subprocess.run([vmm, "check", "--json"], capture_output=True, text=True, timeout=120)
        _check[vmm] = json.loads(r.stdout)
    return _check[vmm]


def emulated(vmm):
    return check(vmm).get("virtualization") != "hardware"


def guest_mips(vmm):
    c = check(vmm)
    if not emulated(vmm):
        return HARDWARE_MIPS
    return max(0.1, float(c.get("guest_kernel_mips") or 1.0))


def seconds(vmm, host_s, kernel_minstr=0.0):
    """The budget of work that takes host_s seconds at hardware speed plus kernel_minstr
    million guest-kernel instructions."""
    expected = host_s + kernel_minstr / guest_mips(vmm)
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    return expected * MARGIN * max(1.0, load)


# What the guest-booting cases cost, measured on an emulation-only host at 1.3 M
# guest-kernel instructions/s (load below 1) and turned into instructions:
# a Linux guest's boot to its agent: about 20 s
BOOT_MINSTR = 27.0
# a child's first python3 (page faults and exec in the guest kernel): 28 s
FIRST_PYTHON_MINSTR = 37.0
# IPython's first start in a guest (run_code): several minutes
IPYTHON_MINSTR = 300.0
# the python template (boot to agent, warm-up of python3, snapshot): 94 s; its warm-up
# has also started run_code's IPython kernel since session 21: 110 s in all, with
# `check` saying 4 M instructions/s
TEMPLATE_MINSTR = 125.0 + IPYTHON_MINSTR
