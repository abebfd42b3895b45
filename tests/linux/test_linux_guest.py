#!/usr/bin/env python3
"""End to end with a real Linux guest: mitos-agent inside the firmware kernel, over vsock.

usage: test_linux_guest.py MITOS_VMM MITOS_AGENT SOURCE_ROOT [VECTOR_LEAK]

Builds (or takes from the cache) the guest kernel with firmware/build-kernel.sh and a
read-only root image with firmware/build-rootfs.sh --python (mitos-agent as init,
busybox, python3 + IPython). Boots it once under `mitos-vmm run` until the agent
answers on vsock, warms run_code's IPython there, snapshots it, and starts children
with `mitos-vmm restore`: exec (output and exit codes), files (write, read), run_code
(values, state kept per child), post_fork, and two children that must see neither each
other's files nor each other's Python state; VECTOR_LEAK (tests/linux/vector_leak.c, static)
checks in the template and in a child that the guest kernel keeps each task's vector
registers across context switches. Then boots the initramfs of
firmware/build-initramfs.sh (the agent as /init) once to agent-ready.

On emulation-only KVM (`mitos-vmm check`: nested PVM, no VT-x/AMD-V) it uses the "pvm"
kernel variant and firmware/guest-pvm.cmdline; on hardware KVM the plain kernel.
MITOS_LINUX_KERNEL=PATH skips the kernel build (a vmlinux of the right variant).

Exits 77 (skipped) without /dev/kvm, when the agent is not statically linked (sanitizer
builds link it dynamically; the plain build runs this suite), or when the kernel cannot
be built because Debian's linux-source-6.1 is not available here.
"""
import hashlib
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from agent_client import entropy  # noqa: E402
from guest_env import ROOT_ARGS, VMFORK_LINE, Env, main_value  # noqa: E402

env = Env(*sys.argv[1:4])
VECTOR_LEAK = sys.argv[4] if len(sys.argv) > 4 else ""
log = env.log
failures, passed = [], 0


def case(name, ok, detail=""):
    global passed
    if ok:
        passed += 1
        print(f"ok   {name}", flush=True)
    else:
        failures.append(name)
        print(f"FAIL {name}\n{detail}", flush=True)


def vector_registers_kept(agent, where):
    """Runs vector-leak in the guest: two tasks on one CPU must each keep their own YMM,
    ZMM and opmask values across a few thousand switches."""
    if not VECTOR_LEAK:
        log(f"{where}: vector-leak not built (sanitizer build): vector registers not checked")
        return
    with open(VECTOR_LEAK, "rb") as f:
        w = agent.write_file("/tmp/vector-leak", f.read(), mode=0o755)
    out, err, end = agent.exec(cmd="/tmp/vector-leak; rc=$?; rm -f /tmp/vector-leak; exit $rc")
    case(f"{where}: every task keeps its own vector registers across context switches",
         end.get("exit_code") == 0, f"{w} {out!r} {err!r} {end}")
    log(f"{where}: {out.decode(errors='replace').strip()}")


def main():
    skipped = env.run("mitos-linux-", run_suite)
    if skipped is not None:
        return skipped
    print(f"{passed} passed, {len(failures)} failed ({time.time() - env.t0:.0f} s)")
    return 1 if failures else 0


def run_suite(tmp, kernel, pvm):
    rootfs = env.rootfs(os.path.join(tmp, "rootfs.img"), "--python")
    tuning = env.tuning(pvm)
    log(f"booting {kernel} ({'emulation-only KVM, pvm variant' if pvm else 'hardware KVM'})")
    parent, t_init, t_ready, p = env.boot(tmp, "template", kernel, f"{tuning} {ROOT_ARGS}",
                                          ["--mem", "256", "--disk", f"{rootfs},ro"], case)
    if p is None:
        print(env.stop(parent)[1])
        return
    t = time.time()
    # random imported and seeded in the template: every child's kernel inherits its state.
    _, events, end = p.run_code("import random\n1 + 1")
    t_ipython = time.time() - t
    case("template: run_code starts IPython and returns a value", main_value(events) == "2",
         f"{events} {end}")
    log(f"template: IPython started and ran a cell in {t_ipython:.1f} s")
    vector_registers_kept(p, "template")
    if not pvm:
        out, _, _ = p.exec(cmd="ls /sys/bus/acpi/drivers/vmgenid/")
        case("template: Linux's vmgenid driver has the VMM's VM generation ID device",
             b"MTOS0001:00" in out.split(), repr(out))
    # KVM before Linux 6.15 leaves the bit for the VMM to add (vmm/kvm_vm.c); with it the
    # guest's clock events come from the LAPIC's TSC-deadline mode.
    out, _, _ = p.exec(cmd="grep -m1 ^flags /proc/cpuinfo; "
                           "cat /sys/devices/system/clockevents/clockevent0/current_device")
    case("template: CPUID offers the TSC-deadline timer and the kernel ticks with it",
         b"tsc_deadline_timer" in out.split() and out.split()[-1:] == [b"lapic-deadline"], repr(out))
    p.close()
    # Let the guest retire the closed connection, so the snapshot holds a listening agent
    # and nothing half-open.
    time.sleep(1)
    snap = os.path.join(tmp, "snap")
    r = env.snapshot(parent, snap)
    case("snapshot of the warm template", r.returncode == 0, r.stdout + r.stderr)
    rc, err = env.stop(parent)
    stats = "; ".join(ln for ln in err.splitlines() if ln.startswith("stats: e"))
    log(f"template stopped (exit {rc}); {stats}")
    if r.returncode != 0:
        return

    a_vm, a, t_a = env.restore_child(tmp, snap, "child-a")
    b_vm, b, t_b = env.restore_child(tmp, snap, "child-b")
    log(f"children ready: {t_a * 1000:.0f} ms and {t_b * 1000:.0f} ms from restore to HELLO")
    pf = a.call("post_fork", entropy=entropy(), realtime_ns=time.time_ns())
    case("post_fork reseeds and sets the clock", pf.get("reseeded") is True and pf.get("clock_set") is True,
         str(pf))
    pf_b = b.call("post_fork", entropy=entropy(), realtime_ns=time.time_ns())

    if pvm:
        log("pvm kernel: no ACPI, so no VM generation ID to check")
    else:
        # The notification runs in a kernel thread after the interrupt: wait up to 5 s.
        out, _, _ = a.exec(cmd=f"for i in $(seq 50); do dmesg | grep -q '{VMFORK_LINE}' && break;"
                               f" sleep 0.1; done; dmesg | grep -c '{VMFORK_LINE}'")
        case("a child's kernel saw its new VM generation ID and reseeded (vmgenid, ACPI GED)",
             out.strip() == b"1", repr(out))
    vector_registers_kept(a, "child")
    out, errout, end = a.exec(["echo", "hello", "from", "a", "child"])
    case("exec echo: output", out == b"hello from a child\n", repr(out) + repr(errout))
    case("exec echo: exit code 0", end.get("exited") is True and end.get("exit_code") == 0, str(end))
    out, errout, end = a.exec(cmd="echo out; echo err >&2; exit 7")
    case("exec sh -c: stdout, stderr, exit code 7",
         out == b"out\n" and errout == b"err\n" and end.get("exit_code") == 7, f"{out!r} {errout!r} {end}")
    end = a.exec(["/nonexistent"])[2]
    case("exec of a missing program fails cleanly", end.get("error", {}).get("code") == "not_found"
         or end.get("exit_code") == 127, str(end))

    payload = bytes(range(256)) * 257 + b"end"
    w = a.write_file("/root/a.bin", payload)
    case("write a file", w.get("bytes") == len(payload), str(w))
    data, end = a.read_file("/root/a.bin")
    case("read it back", data == payload and end.get("bytes") == len(payload), f"{len(data)} bytes, {end}")
    out, _, _ = a.exec(["sha256sum", "/root/a.bin"])
    case("the guest sees the same bytes", out.split()[:1] == [hashlib.sha256(payload).hexdigest().encode()],
         repr(out))

    w = b.write_file("/root/b.txt", b"only b\n")
    case("second child writes its own file", w.get("bytes") == 7, str(w))
    ea = a.call("exists", path="/root/b.txt")
    eb = b.call("exists", path="/root/a.bin")
    case("children do not see each other's files",
         ea.get("exists") is False and eb.get("exists") is False, f"a sees b: {ea}, b sees a: {eb}")
    data, _ = b.read_file("/root/b.txt")
    case("each child keeps its own", data == b"only b\n", repr(data))

    t = time.time()
    _, events, end = a.run_code("x = 6 * 7\nx")
    t_code = time.time() - t
    case("run_code returns a value", main_value(events) == "42", f"{events} {end}")
    log(f"run_code in a child of the warm template: {t_code:.2f} s")
    out, events, end = a.run_code("print('printed'); x + 1")
    case("run_code keeps state and streams stdout", main_value(events) == "43" and out == b"printed\n",
         f"{out!r} {events} {end}")
    _, events, end = b.run_code("'x' in globals()")
    case("the other child's Python state is its own", main_value(events) == "False", f"{events} {end}")
    _, ev_a, end_a = a.run_code("random.random()")
    _, ev_b, end_b = b.run_code("random.random()")
    case("the template's warm kernel draws other numbers in each child (reseeded on post_fork)",
         main_value(ev_a) is not None and main_value(ev_a) != main_value(ev_b),
         f"{ev_a} {end_a} / {ev_b} {end_b} / {pf_b}")
    _, events, end = b.run_code("1 / 0")
    errors = [e for e in events if e.get("type") == "error"]
    case("run_code reports an exception", end.get("status") == "error" and errors
         and errors[0].get("name") == "ZeroDivisionError", f"{events} {end}")

    c_vm, c, _ = env.restore_child(tmp, snap, "child-c")
    ec = c.call("exists", path="/root/a.bin")
    case("a later child starts from the snapshot, not a sibling", ec.get("exists") is False, str(ec))
    end = a.call("poweroff")
    a.close()
    rc, err = a_vm.finish(timeout=env.op_timeout)
    case("poweroff through the agent ends the VM with 0", end == {} and rc == 0, f"{end} rc={rc} {err}")
    for conn, vm in ((b, b_vm), (c, c_vm)):
        conn.close()
        rc, err = env.stop(vm)
        case("a child stops through its control socket", rc == 0, err)

    # The initramfs of build-initramfs.sh boots to the agent too.
    initrd = os.path.join(tmp, "initrd.cpio")
    subprocess.run([os.path.join(env.root, "firmware", "build-initramfs.sh"), "--agent",
                    env.agent, "--out", initrd], check=True, timeout=600)
    vm, ti_init, ti_ready, i = env.boot(tmp, "initramfs", kernel, f"{tuning} rdinit=/init",
                                         ["--mem", "128", "--initrd", initrd], case)
    if i is not None:
        out, _, end = i.exec(["echo", "from", "the", "initramfs"])
        case("initramfs: exec echo", out == b"from the initramfs\n" and end.get("exit_code") == 0,
             f"{out!r} {end}")
        i.close()
    env.stop(vm)
    log(f"timings: template (root image) init {t_init:.1f} s, agent-ready {t_ready:.1f} s after "
        f"`mitos-vmm run` started, IPython warm {t_ipython:.1f} s later; restored children "
        f"ready in {t_a * 1000:.0f} / {t_b * 1000:.0f} ms; initramfs: init "
        f"{ti_init or 0:.1f} s, agent-ready {ti_ready or 0:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
