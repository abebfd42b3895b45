#!/usr/bin/env python3
"""End to end with a real Linux guest: mitos-agent inside the firmware kernel, over vsock.

usage: test_linux_guest.py MITOS_VMM MITOS_AGENT SOURCE_ROOT

Builds (or takes from the cache) the guest kernel with firmware/build-kernel.sh and a
read-only root image with firmware/build-rootfs.sh --python (mitos-agent as init,
busybox, python3 + IPython). Boots it once under `mitos-vmm run` until the agent
answers on vsock, warms run_code's IPython there, snapshots it, and starts children
with `mitos-vmm restore`: exec (output and exit codes), files (write, read), run_code
(values, state kept per child), post_fork, and two children that must see neither each
other's files nor each other's Python state. Then boots the initramfs of
firmware/build-initramfs.sh (the agent as /init) once to agent-ready.

On emulation-only KVM (`mitos-vmm check`: nested PVM, no VT-x/AMD-V) it uses the "pvm"
kernel variant and firmware/guest-pvm.cmdline; on hardware KVM the plain kernel.
MITOS_LINUX_KERNEL=PATH skips the kernel build (a vmlinux of the right variant).

Exits 77 (skipped) without /dev/kvm, when the agent is not statically linked (sanitizer
builds link it dynamically; the plain build runs this suite), or when the kernel cannot
be built because Debian's linux-source-6.1 is not available here.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools", "pylib"))
from agent_client import Agent, AgentError, entropy  # noqa: E402
from mitosvm import VM, wait_for_socket  # noqa: E402

VMM, AGENT, ROOT = sys.argv[1:4]
SKIP = 77
BOOT_TIMEOUT = 600      # boot to agent-ready; about 20 s measured on PVM
OP_TIMEOUT = 900        # the first run_code starts IPython: minutes on PVM
# What follows "--" goes to init: the agent finds mitos_kernel.py itself, so this only
# checks that arguments reach it (mitos-vmm puts its virtio_mmio.device= entries before).
ROOT_ARGS = ("root=/dev/vda ro rootfstype=ext4 init=/usr/bin/mitos-agent "
             "-- --python-helper=/usr/share/mitos/mitos_kernel.py")
failures, passed = [], 0
t0 = time.time()
vms = []  # every VM started, so none outlives the suite


def start_vm(args, control):
    vm = VM(VMM, args, control)
    vms.append(vm)
    return vm


def log(msg):
    print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)


def case(name, ok, detail=""):
    global passed
    if ok:
        passed += 1
        print(f"ok   {name}", flush=True)
    else:
        failures.append(name)
        print(f"FAIL {name}\n{detail}", flush=True)


class Skip(Exception):
    pass


def emulation_only():
    r = subprocess.run([VMM, "check", "--json"], capture_output=True, text=True, timeout=120)
    try:
        return json.loads(r.stdout)["virtualization"] != "hardware"
    except (ValueError, KeyError):
        raise Skip(f"mitos-vmm check --json gave no verdict: {r.stdout}{r.stderr}")


def linux_source_available():
    installed = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", "linux-source-6.1"],
                               capture_output=True, text=True)
    if installed.stdout == "installed":
        return True
    policy = subprocess.run(["apt-cache", "policy", "linux-source-6.1"], capture_output=True, text=True)
    m = re.search(r"Candidate:\s*(\S+)", policy.stdout)
    if not m or m.group(1) == "(none)":
        # The package lists may just be stale on a fresh machine.
        subprocess.run(["apt-get", "update", "-q"], capture_output=True)
        policy = subprocess.run(["apt-cache", "policy", "linux-source-6.1"], capture_output=True, text=True)
        m = re.search(r"Candidate:\s*(\S+)", policy.stdout)
    return bool(m) and m.group(1) != "(none)"


def build_kernel(variant):
    override = os.environ.get("MITOS_LINUX_KERNEL")
    if override:
        return override
    if shutil.which("dpkg-query") is None or not linux_source_available():
        raise Skip("Debian's linux-source-6.1 is not available here (apt-cache policy "
                   "linux-source-6.1 has no candidate): the guest kernel cannot be built")
    if os.geteuid() != 0 and shutil.which("sudo") is None:
        raise Skip("building the guest kernel installs packages: run as root or with sudo")
    args = [os.path.join(ROOT, "firmware", "build-kernel.sh")]
    if variant:
        args += ["--variant", variant]
    log(f"building the guest kernel ({' '.join(args[1:]) or 'plain'}; about 7 minutes on 2 "
        "cores the first time, cached afterwards)")
    r = subprocess.run(args, stdout=subprocess.PIPE, text=True, timeout=3000)
    if r.returncode != 0:
        raise RuntimeError(f"firmware/build-kernel.sh failed (exit {r.returncode}); its log is above")
    return os.path.join(r.stdout.strip().splitlines()[-1], "vmlinux")


def read_cmdline(path):
    with open(path) as f:
        return " ".join(ln.strip() for ln in f if ln.strip() and not ln.startswith("#"))


def agent_is_static():
    r = subprocess.run(["readelf", "-l", AGENT], capture_output=True, text=True)
    return r.returncode == 0 and "INTERP" not in r.stdout


def main():
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError as e:
        print(f"SKIP: no usable /dev/kvm ({e.strerror})")
        return SKIP
    if not agent_is_static():
        print(f"SKIP: {AGENT} is dynamically linked (sanitizer build); the guest needs the "
              "static agent of the plain build, where this suite runs")
        return SKIP
    tmp = tempfile.mkdtemp(prefix="mitos-linux-")
    try:
        pvm = emulation_only()
        kernel = build_kernel("pvm" if pvm else "")
        run_suite(tmp, kernel, pvm)
    except Skip as e:
        print(f"SKIP: {e}")
        return SKIP
    finally:
        for vm in vms:
            if vm.p.poll() is None:
                vm.p.kill()
                vm.p.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{passed} passed, {len(failures)} failed ({time.time() - t0:.0f} s)")
    return 1 if failures else 0


def boot(tmp, name, kernel, cmdline, boot_args):
    """Boots to agent-ready: (vm, seconds to init, seconds to agent-ready, agent)."""
    vsock, ctl = os.path.join(tmp, f"{name}.vsock"), os.path.join(tmp, f"{name}.ctl")
    start = time.time()
    vm = start_vm(["run", "--kernel", kernel, "--cmdline", cmdline, "--vsock", vsock,
                   "--control", ctl, "--stats"] + boot_args, ctl)
    wait_for_socket(ctl)
    m = vm.wait_for(r"Run \S+ as init process", timeout=BOOT_TIMEOUT)
    t_init = time.time() - start
    case(f"{name}: kernel boots to init", m is not None, "\n".join(vm.seen[-40:]))
    if m is None:
        return vm, None, None, None
    log(f"{name}: init after {t_init:.1f} s")
    try:
        a = Agent.connect(vsock, deadline=start + BOOT_TIMEOUT, timeout=OP_TIMEOUT)
    except AgentError as e:
        vm.drain()
        case(f"{name}: agent answers on vsock", False, f"{e}\n" + "\n".join(vm.seen[-40:]))
        return vm, None, None, None
    t_ready = time.time() - start
    health = a.call("health")
    case(f"{name}: agent answers on vsock as PID 1",
         health.get("pid") == 1 and health.get("init") is True, str(health))
    log(f"{name}: agent ready after {t_ready:.1f} s")
    return vm, t_init, t_ready, a


def stop(vm):
    vm.call({"cmd": "stop"})
    rc, err = vm.finish(timeout=OP_TIMEOUT)
    return rc, err


def restore_child(tmp, snap, name):
    vsock, ctl = os.path.join(tmp, f"{name}.vsock"), os.path.join(tmp, f"{name}.ctl")
    start = time.time()
    vm = start_vm(["restore", "--snapshot", snap, "--vsock", vsock, "--control", ctl], ctl)
    wait_for_socket(ctl)
    a = Agent.connect(vsock, deadline=start + OP_TIMEOUT, timeout=OP_TIMEOUT)
    return vm, a, time.time() - start


def main_value(events):
    results = [e for e in events if e.get("type") == "result" and e.get("is_main_result")]
    return results[0]["data"].get("text/plain") if results else None


def run_suite(tmp, kernel, pvm):
    rootfs = os.path.join(tmp, "rootfs.img")
    subprocess.run([os.path.join(ROOT, "firmware", "build-rootfs.sh"), "--agent", AGENT,
                    "--out", rootfs, "--python"], check=True, timeout=900)
    tuning = read_cmdline(os.path.join(ROOT, "firmware", "guest-pvm.cmdline")) if pvm else \
        "console=ttyS0 panic=-1 reboot=k"
    log(f"booting {kernel} ({'emulation-only KVM, pvm variant' if pvm else 'hardware KVM'})")
    parent, t_init, t_ready, p = boot(tmp, "template", kernel, f"{tuning} {ROOT_ARGS}",
                                      ["--mem", "256", "--disk", f"{rootfs},ro"])
    if p is None:
        print(stop(parent)[1])
        return
    t = time.time()
    _, events, end = p.run_code("1 + 1")
    t_ipython = time.time() - t
    case("template: run_code starts IPython and returns a value", main_value(events) == "2",
         f"{events} {end}")
    log(f"template: IPython started and ran a cell in {t_ipython:.1f} s")
    p.close()
    # Let the guest retire the closed connection, so the snapshot holds a listening agent
    # and nothing half-open.
    time.sleep(1)
    snap = os.path.join(tmp, "snap")
    r = subprocess.run([VMM, "snapshot", "--control", parent.control, "--out", snap],
                       capture_output=True, text=True, timeout=300)
    case("snapshot of the warm template", r.returncode == 0, r.stdout + r.stderr)
    rc, err = stop(parent)
    stats = "; ".join(ln for ln in err.splitlines() if ln.startswith("stats: e"))
    log(f"template stopped (exit {rc}); {stats}")
    if r.returncode != 0:
        return

    a_vm, a, t_a = restore_child(tmp, snap, "child-a")
    b_vm, b, t_b = restore_child(tmp, snap, "child-b")
    log(f"children ready: {t_a * 1000:.0f} ms and {t_b * 1000:.0f} ms from restore to HELLO")
    pf = a.call("post_fork", entropy=entropy(), realtime_ns=time.time_ns())
    case("post_fork reseeds and sets the clock", pf.get("reseeded") is True and pf.get("clock_set") is True,
         str(pf))

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
    _, events, end = b.run_code("1 / 0")
    errors = [e for e in events if e.get("type") == "error"]
    case("run_code reports an exception", end.get("status") == "error" and errors
         and errors[0].get("name") == "ZeroDivisionError", f"{events} {end}")

    c_vm, c, _ = restore_child(tmp, snap, "child-c")
    ec = c.call("exists", path="/root/a.bin")
    case("a later child starts from the snapshot, not a sibling", ec.get("exists") is False, str(ec))
    end = a.call("poweroff")
    a.close()
    rc, err = a_vm.finish(timeout=OP_TIMEOUT)
    case("poweroff through the agent ends the VM with 0", end == {} and rc == 0, f"{end} rc={rc} {err}")
    for conn, vm in ((b, b_vm), (c, c_vm)):
        conn.close()
        rc, err = stop(vm)
        case("a child stops through its control socket", rc == 0, err)

    # The initramfs of build-initramfs.sh boots to the agent too.
    initrd = os.path.join(tmp, "initrd.cpio")
    subprocess.run([os.path.join(ROOT, "firmware", "build-initramfs.sh"), "--agent", AGENT,
                    "--out", initrd], check=True, timeout=600)
    vm, ti_init, ti_ready, i = boot(tmp, "initramfs", kernel, f"{tuning} rdinit=/init",
                                     ["--mem", "128", "--initrd", initrd])
    if i is not None:
        out, _, end = i.exec(["echo", "from", "the", "initramfs"])
        case("initramfs: exec echo", out == b"from the initramfs\n" and end.get("exit_code") == 0,
             f"{out!r} {end}")
        i.close()
    stop(vm)
    log(f"timings: template (root image) init {t_init:.1f} s, agent-ready {t_ready:.1f} s after "
        f"`mitos-vmm run` started, IPython warm {t_ipython:.1f} s later; restored children "
        f"ready in {t_a * 1000:.0f} / {t_b * 1000:.0f} ms; initramfs: init "
        f"{ti_init or 0:.1f} s, agent-ready {ti_ready or 0:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
