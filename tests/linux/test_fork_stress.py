#!/usr/bin/env python3
"""Fork stress in a real Linux guest: every child of the warm template is an exact and
unique continuation of it.

usage: test_fork_stress.py MITOS_VMM MITOS_AGENT SOURCE_ROOT

Boots the firmware kernel (guest_env.py: the pvm variant on emulation-only KVM) with a
root image holding python3, IPython and numpy; warms run_code there and has the
template compute, before its snapshot, reference values: for a few seeds, the SHA-256
of a chain of float64 matrix products and of a large integer buffer made with numpy's
vector loops. Then ROUNDS rounds of CHILDREN children restored from that one snapshot,
PARALLEL at a time; each child, after post_fork, computes the same values in two
threads of the restored IPython kernel at once (so the guest switches between tasks in
the middle of vector code) and must match the template bit for bit, with no crash.
Each child also reports /proc/sys/kernel/random/uuid and its wall clock: every uuid
must differ (the guest RNG is reseeded before the sandbox is ready), the clock must
be within 50 ms of the host's around that first run_code, and its kernel must have
reseeded once for a VM fork (the new VM generation ID; not on the pvm kernel, which
has no ACPI).

Exits 77 where test_linux_guest.py does (no /dev/kvm, sanitizer build, no kernel
source). MITOS_STRESS_ROUNDS, MITOS_STRESS_CHILDREN, MITOS_STRESS_PARALLEL and
MITOS_STRESS_VCPUS change the shape: 5, 20, 4, 2 by default on hardware KVM; on
emulation-only KVM, where every child's kernel work runs through KVM's instruction
emulator, 1 round of 8 children, 2 at a time (4 minutes; the full shape took 28.5 there:
set the variables for it). With more than one vCPU the
template must see them as cores of one package (the CPUID topology of vmm/vcpu.c), and
every child all of them online.
"""
import ast
import concurrent.futures
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "tools", "pylib"))
from agent_client import AgentError, entropy  # noqa: E402
from guest_env import ROOT_ARGS, VMFORK_LINE, Env, main_value  # noqa: E402
from mitosvm import Cases  # noqa: E402


def shape(pvm):
    """(rounds, children, parallel) for this host."""
    defaults = (1, 8, 2) if pvm else (5, 20, 4)
    names = ("MITOS_STRESS_ROUNDS", "MITOS_STRESS_CHILDREN", "MITOS_STRESS_PARALLEL")
    return tuple(int(os.environ.get(n, d)) for n, d in zip(names, defaults))


VCPUS = int(os.environ.get("MITOS_STRESS_VCPUS", "2"))
SEEDS = (1, 2, 3)
CLOCK_SLACK_NS = 50_000_000

env = Env(*sys.argv[1:4])
case = Cases()

# Defined in the template before its snapshot; the children call it.
DEFINE = f"""
import hashlib, json, threading, time
import numpy as np

def mitos_values(seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((160, 160))
    b = rng.standard_normal((160, 160)) / 12.0
    for _ in range(24):
        a = np.tanh(a @ b) + a * 0.5
    n = 1 << 19
    x = np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)
    for _ in range(8):
        x ^= x >> np.uint64(29)
        x *= np.uint64(0xBF58476D1CE4E5B9)
    return [hashlib.sha256(a.tobytes()).hexdigest(), hashlib.sha256(x.tobytes()).hexdigest()]

def mitos_all():
    return {{str(s): mitos_values(s) for s in {SEEDS!r}}}

def mitos_threads(n=2):
    out = [None] * n
    def work(i):
        try:
            out[i] = mitos_all()
        except BaseException as e:
            out[i] = repr(e)
    ts = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out

mitos_reference = mitos_all()
json.dumps(mitos_reference)
"""

# The CPUs Linux brought up, and what it made of the CPUID topology: cpu -> (package,
# core) for each.
TOPOLOGY = """
import os
mitos_online = len(os.sched_getaffinity(0))
mitos_topo = {}
for c in range(mitos_online):
    t = '/sys/devices/system/cpu/cpu%d/topology/' % c
    mitos_topo[c] = [open(t + f).read().strip() for f in ('physical_package_id', 'core_id')]
repr(mitos_topo)
"""

CHECK = """
mitos_t = time.time_ns()
mitos_uuid = open('/proc/sys/kernel/random/uuid').read().strip()
import subprocess
mitos_vmfork = subprocess.run(['dmesg'], capture_output=True, text=True).stdout.count(%r)
json.dumps({"time_ns": mitos_t, "uuid": mitos_uuid, "cpus": len(os.sched_getaffinity(0)),
            "threads": mitos_threads(2), "vmfork": mitos_vmfork})
""" % VMFORK_LINE


def main():
    skipped = env.run("mitos-stress-", run)
    if skipped is not None:
        return skipped
    print(f"({time.time() - env.t0:.0f} s)")
    return case.finish()


def child(tmp, snap, name, reference, vmforks):
    """One child: a list of problems (empty when it matched), its uuid, its clock skew.
    vmforks: how often its kernel must say it reseeded for a VM fork (0: no ACPI)."""
    vm, a, t_ready = env.restore_child(tmp, snap, name)
    problems = []
    uuid = skew = None
    try:
        pf = a.call("post_fork", entropy=entropy(), realtime_ns=time.time_ns())
        if pf.get("reseeded") is not True or pf.get("clock_set") is not True:
            problems.append(f"post_fork: {pf}")
        before = time.time_ns()
        _, events, end = a.run_code(CHECK)
        after = time.time_ns()
        value = main_value(events)
        if end.get("status") != "ok" or value is None:
            problems.append(f"run_code failed: {events} {end}")
        else:
            got = json.loads(ast.literal_eval(value))
            uuid = got["uuid"]
            g = got["time_ns"]
            skew = 0 if before - CLOCK_SLACK_NS <= g <= after + CLOCK_SLACK_NS else \
                min(abs(g - before), abs(g - after))
            if got["vmfork"] != vmforks:
                problems.append(f"the kernel reseeded for a VM fork {got['vmfork']} times")
            if got["cpus"] != VCPUS:
                problems.append(f"{got['cpus']} CPUs online, not {VCPUS}")
            for i, t in enumerate(got["threads"]):
                if t != reference:
                    problems.append(f"thread {i}: {t} != the template's {reference}")
        a.close()
    except (AgentError, OSError, ValueError) as e:
        problems.append(f"{type(e).__name__}: {e}")
    rc, err = env.stop(vm)
    if rc != 0:
        problems.append(f"mitos-vmm exit {rc}: {err[-2000:]}")
    if problems:
        problems.append("its console ends:\n  " + "\n  ".join(vm.tail(30)))
    return name, problems, uuid, skew, t_ready


def run(tmp, kernel, pvm):
    ROUNDS, CHILDREN, PARALLEL = shape(pvm)
    rootfs = env.rootfs(os.path.join(tmp, "rootfs.img"), "--numpy")
    env.log(f"booting {kernel} with {VCPUS} vCPU(s)")
    parent, _, _, p = env.boot(tmp, "template", kernel, f"{env.tuning(pvm)} {ROOT_ARGS}",
                               ["--mem", "256", "--vcpus", str(VCPUS), "--disk", f"{rootfs},ro"],
                               case)
    if p is None:
        print(env.stop(parent)[1])
        return
    t = time.time()
    p.s.settimeout(2 * env.op_timeout)   # IPython and numpy start: many minutes when loaded
    try:
        _, events, end = p.run_code(TOPOLOGY)
        value = main_value(events)
        topo = ast.literal_eval(ast.literal_eval(value)) if value else {}
        packages = {pkg for pkg, _ in topo.values()}
        cores = {core for _, core in topo.values()}
        case(f"template: {VCPUS} vCPU(s) online, seen as {VCPUS} core(s) of one package",
             len(topo) == VCPUS and packages == {"0"} and len(cores) == VCPUS,
             f"online CPU -> [package, core]: {topo} {events} {end}")
        _, events, end = p.run_code(DEFINE)
    except (AgentError, OSError) as e:
        events, end = [], {"error": f"{type(e).__name__}: {e}"}
    value = main_value(events)
    case("template: numpy imported and reference values computed", end.get("status") == "ok"
         and value is not None, f"{events} {end}")
    if value is None:
        return
    reference = json.loads(ast.literal_eval(value))
    env.log(f"template: IPython and numpy warm in {time.time() - t:.0f} s; reference {reference}")
    p.close()
    time.sleep(1)
    snap = os.path.join(tmp, "snap")
    r = env.snapshot(parent, snap)
    case("snapshot of the warm template", r.returncode == 0, r.stdout + r.stderr)
    env.stop(parent)
    if r.returncode != 0:
        return

    uuids, skews, readies, bad = [], [], [], []
    for rnd in range(1, ROUNDS + 1):
        t = time.time()
        with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
            futures = [pool.submit(child, tmp, snap, f"r{rnd}c{i}", reference, 0 if pvm else 1)
                       for i in range(CHILDREN)]
            results = [f.result() for f in futures]
        for name, problems, uuid, skew, t_ready in results:
            if problems:
                bad.append((name, problems))
            uuids.append(uuid)
            skews.append(skew)
            readies.append(t_ready)
        n_bad = sum(1 for r in results if r[1])
        env.log(f"round {rnd}: {CHILDREN} children, {PARALLEL} at a time, in "
                f"{time.time() - t:.0f} s; {n_bad} with a crash or a mismatch")
    total = ROUNDS * CHILDREN
    case(f"{total} children computed the template's values exactly, no crash", not bad,
         "\n".join(f"{n}: {'; '.join(p)}" for n, p in bad[:10]))
    distinct = len({u for u in uuids if u})
    case(f"{total} children: {total} distinct kernel RNG uuids after post_fork",
         distinct == total, f"{distinct} distinct of {len(uuids)}: {sorted(uuids, key=str)[:10]}")
    late = [s for s in skews if s]
    case("every child's wall clock within 50 ms of the host's at its first run_code",
         all(s is not None for s in skews) and not late,
         f"{len(late)} off by up to {max(late) / 1e6 if late else 0:.0f} ms; "
         f"{skews.count(None)} unmeasured")
    readies.sort()
    env.log(f"restore to HELLO: p50 {readies[len(readies) // 2] * 1000:.0f} ms, "
            f"p99 {readies[min(len(readies) - 1, len(readies) * 99 // 100)] * 1000:.0f} ms")


if __name__ == "__main__":
    sys.exit(main())
