#!/usr/bin/env python3
"""End-to-end tests of `mitos-vmm serve --engine kvm` with the project's test guest as the
template's kernel (`testguest.mode=agent`: a stand-in agent that answers HELLO, health and
post_fork over vsock, and `unsupported` to everything else). The whole sandbox lifecycle
runs on real microVMs: template build (boot, agent health, snapshot), sandboxes restored
into prepared VMs, post_fork, pause/resume, fork of a running sandbox through a layer,
expiry, delete, a VM crash, re-adoption after serve is killed, graceful stop; plus the
jail of each VM and create-sandbox latency with the pool warm. Stdlib only.

usage: test_kvm_engine.py MITOS_VMM MITOS_AGENT TESTGUEST_ELF TESTGUEST_MKDISK [NAME...]
Exits 77 without /dev/kvm or root. Every VM process is jailed (under its own uid in its
own root: api/API.md, "The VM jail"), as serve does by default; MITOS_TEST_VM_JAIL=0
gives every serve --no-vm-jail instead."""
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools", "pylib"))
from mitos_test import Runner, Server, cgroup_dirs, eq, exit_of, wait_until  # noqa: E402
from mitosvm import control_call  # noqa: E402
import budget  # noqa: E402

VMM, AGENT, TESTGUEST, MKDISK = (os.path.abspath(a) for a in sys.argv[1:5])
ONLY = sys.argv[5:]
MEM = 32


JAIL = os.environ.get("MITOS_TEST_VM_JAIL", "1") != "0"


def kvm_server(state_dir=None, extra=()):
    return Server(VMM, AGENT, extra=["--engine", "kvm"] + ([] if JAIL else ["--no-vm-jail"]) + list(extra), state_dir=state_dir)


def make_disk(d):
    path = os.path.join(d, "rootfs.img")
    if not os.path.exists(path):
        subprocess.check_call([MKDISK, path, "64"])
        # Root's alone: a jailed VM gets its disk as a descriptor from serve.
        os.chmod(path, 0o600)
    return path


def spec(s, **kw):
    body = {"id": "tg", "kernel": TESTGUEST, "rootfs": make_disk(s.state_dir + "-disk"),
            "cmdline": "testguest.mode=agent", "mem_mib": MEM, "memory_max_mib": MEM + 96,
            "cpu_percent": 50}
    body.update(kw)
    return body


def template(s, **kw):
    os.makedirs(s.state_dir + "-disk", exist_ok=True)
    st, r = s.request("POST", "/v1/templates", spec(s, **kw))
    if st != 200:
        raise AssertionError("template: %s %r\n%s" % (st, r, s.stderr()[-2000:]))
    return r


def registry(s, name):
    """The template's registry record (engine, state, spec, root: not in the contract's answer)."""
    with open(os.path.join(s.state_dir, "templates", name + ".json")) as f:
        return json.load(f)


def fork(s, template=None, sandbox_id=None, n=1):
    """n sandboxes at once from a template (POST /v1/fork), or one after the other from a
    running sandbox (POST /v1/sandboxes/{id}/fork: each child gets its own layer), each as
    GET /v1/sandboxes/{id} shows it (with its state)."""
    out = [None] * n

    def one(i):
        cid = "k%08x" % random.randrange(1 << 32)
        if sandbox_id:
            out[i] = s.request("POST", "/v1/sandboxes/%s/fork" % sandbox_id, {"id": cid})
        else:
            out[i] = s.request("POST", "/v1/fork", {"template": template, "id": cid})
    th = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in th:
        t.start()
        if sandbox_id:
            t.join()
    for t in th:
        t.join()
    if any(o is None or o[0] != 200 for o in out):
        # Delete the ones that started, so one failure does not fail the tests after it.
        for o in out:
            if o and o[0] == 200:
                s.request("DELETE", "/v1/sandboxes/" + o[1]["id"])
        raise AssertionError("fork statuses: %r (None: no answer in time)" % (out,))
    return [s.request("GET", "/v1/sandboxes/" + r["id"])[1] for st, r in out]


def parent_of(s, sid):
    with open(os.path.join(s.state_dir, "sandboxes", sid, "sandbox.json")) as f:
        return json.load(f)["parent"]


def sb_dir(s, sid):
    return os.path.join(s.state_dir, "sandboxes", sid)


def vm_pid(s, sid):
    with open(os.path.join(sb_dir(s, sid), "sandbox.json")) as f:
        return json.load(f)["pid"]


def console(s, sid):
    with open(os.path.join(sb_dir(s, sid), "console.log"), errors="replace") as f:
        return f.read()


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def vm_pids(state_dir):
    """Every mitos-vmm process that names a path in state_dir."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if state_dir in cmd and "\0serve\0" not in cmd and alive(int(d)):
            out.append(int(d))
    return out


def pool_ready(s):
    """Prepared VMs: their control sockets (a jailed VM's is in its own vm/)."""
    pool = os.path.join(s.state_dir, "kvm", "pool")
    own = "vm/control" if JAIL else "control"
    return sum(1 for d in os.listdir(pool) if os.path.exists(os.path.join(pool, d, own)))


# ---------------------------------------------------------------- tests

def t_startup_message(s):
    out = "".join(s.stdout)
    if "engine: kvm (requested with --engine kvm)" not in out or "kvm isolation:" not in out:
        raise AssertionError("start-up lines: %r" % out)
    st, r = s.request("GET", "/v1/health")
    eq(r["engine"], "kvm", "health engine")


def t_template_build(s):
    t0 = time.time()
    r = template(s)
    eq((r["id"], r["ready"]), ("tg", True), "answer")
    t = registry(s, "tg")
    eq((t["engine"], t["state"]), ("kvm", "ready"), "engine, state")
    eq(t["spec"]["mem_mib"], MEM, "spec kept")
    snap = os.path.join(t["root"], "snapshot")
    for f in ("memory", "state", "config.json"):
        if not os.path.exists(os.path.join(snap, f)):
            raise AssertionError("snapshot lacks " + f)
    for f in ("vsock", "control", "vm.json"):
        if os.path.exists(os.path.join(t["root"], f)):
            raise AssertionError("template build left " + f)
    print("     template built in %.0f ms" % ((time.time() - t0) * 1000))
    # Again: the same template, not a second build.
    r2 = template(s)
    eq(r2["created_at"], r["created_at"], "second POST")
    st, r = s.request("GET", "/v1/templates")
    eq([x["id"] for x in r], ["tg"], "listed")
    # The pool fills for the template's shape.
    wait_until(lambda: pool_ready(s) >= 2, 20, "two prepared VMs")


def t_template_errors(s):
    os.makedirs(s.state_dir + "-disk", exist_ok=True)
    for body, code in [({"id": "x1", "kernel": "relative/vmlinux", "rootfs": "/nonexistent"}, "invalid_input"),
                       ({"id": "x2", "kernel": "/nonexistent", "rootfs": "/nonexistent"}, "invalid_input"),
                       (spec(s, id="x3", mem_mib=1), "invalid_input"),
                       (spec(s, id="x4", vcpus=0), "invalid_input"),
                       (spec(s, id="x5", cmdline=5), "invalid_input")]:
        st, r = s.request("POST", "/v1/templates", body)
        eq((st, r["error"]["code"]), (400, code), "template %r" % body)
    # A guest that never runs an agent: mode none exits at once.
    t0 = time.time()
    st, r = s.request("POST", "/v1/templates", spec(s, id="noagent", cmdline="testguest.mode=none"))
    eq((st, r["error"]["code"]), (503, "engine_unavailable"), "no agent: %r" % r)
    if "console ended with" not in r["error"]["message"]:
        raise AssertionError("no console tail in %r" % r)
    # One that runs, but nothing on the agent's port (the vsock echo mode): times out.
    # While it is being built, forks from it are refused.
    res = []
    th = threading.Thread(target=lambda: res.append(s.request(
        "POST", "/v1/templates", spec(s, id="deaf", cmdline="testguest.mode=vsock", boot_timeout=2))))
    th.start()
    wait_until(lambda: os.path.exists(os.path.join(s.state_dir, "templates", "deaf.json")), 5, "the build")
    st, r = s.request("POST", "/v1/fork", {"template": "deaf", "id": "from-deaf"})
    eq((st, r["error"]["code"]), (503, "unavailable"), "fork from a template being built")
    st, r = s.request("GET", "/v1/templates")
    eq({x["id"]: x["ready"] for x in r}.get("deaf"), False, "listed as not ready")
    th.join()
    st, r = res[0]
    eq((st, r["error"]["code"]), (503, "engine_unavailable"), "no agent on the port: %r" % r)
    if "within 2 s" not in r["error"]["message"]:
        raise AssertionError("no timeout message in %r" % r)
    print("     failed builds answered in %.1f s" % (time.time() - t0))
    st, r = s.request("GET", "/v1/templates")
    eq([x["id"] for x in r], ["tg"], "failed templates are gone")
    for n in ("noagent", "deaf"):
        for p in (n, n + ".json"):
            if os.path.exists(os.path.join(s.state_dir, "templates", p)):
                raise AssertionError("left " + p)


def t_concurrent_template(s):
    res = []

    def post():
        res.append(s.request("POST", "/v1/templates", spec(s, id="tg2")))
    th = [threading.Thread(target=post) for _ in range(3)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    eq(sorted(st for st, r in res), [200, 200, 200], "one build, two waiters (%r)" % res)
    eq(len({r["created_at"] for st, r in res}), 1, "one template")
    st, r = s.request("GET", "/v1/templates")
    eq(sorted(x["id"] for x in r), ["tg", "tg2"], "both listed")


SNAPSHOT_FILES = ("memory", "state", "config.json")


def snapshot_dir(s, name):
    return os.path.join(registry(s, name)["root"], "snapshot")


def snapshot_inodes(s, name):
    """(device, inode) of each of the template's snapshot files, with a check that no
    temporary directory of a shared one is left: equal lists are one snapshot."""
    snap = snapshot_dir(s, name)
    if os.path.exists(snap + ".new"):
        raise AssertionError(name + ": the shared snapshot's temporary directory is left")
    return [(st.st_dev, st.st_ino) for st in (os.stat(os.path.join(snap, f)) for f in SNAPSHOT_FILES)]


def t_shared_snapshot(s):
    """A template of the same build as tg (other name, same guest, shape, spec) takes tg's
    snapshot as hard links instead of booting its own; one that differs builds."""
    template(s, id="tg3")
    eq(registry(s, "tg3")["state"], "ready", "tg3's state")
    eq(snapshot_inodes(s, "tg3"), snapshot_inodes(s, "tg"), "tg3's snapshot files are tg's")
    if JAIL:
        st = os.stat(snapshot_dir(s, "tg3"))
        eq((st.st_uid, oct(st.st_mode & 0o7777)), (0, "0o755"), "tg3's snapshot directory sealed")
        for f in SNAPSHOT_FILES:
            st = os.stat(os.path.join(snapshot_dir(s, "tg3"), f))
            eq((st.st_uid, oct(st.st_mode & 0o7777)), (0, "0o444"), "tg3's %s sealed" % f)
    # Another shape is another build.
    template(s, id="tg4", cpu_percent=60)
    if set(snapshot_inodes(s, "tg4")) & set(snapshot_inodes(s, "tg")):
        raise AssertionError("tg4 (cpu_percent 60) shares tg's snapshot")
    (sb,) = fork(s, template="tg3")
    eq(sb["state"], "running", "a sandbox of tg3")
    if "agent-stub: post_fork 1" not in console(s, sb["id"]):
        raise AssertionError("no post_fork in the tg3 child's console:\n%s" % console(s, sb["id"]))
    eq(s.request("DELETE", "/v1/sandboxes/" + sb["id"])[0], 200, "delete")


def t_shared_while_building(s):
    """Three names of one build asked for at once: one boots, the two that came while it
    was building wait for it and take its snapshot."""
    res = {}

    def post(name):
        res[name] = s.request("POST", "/v1/templates", spec(s, id=name, cpu_percent=70))
    th = [threading.Thread(target=post, args=(n,)) for n in ("tg5", "tg6", "tg7")]
    for t in th:
        t.start()
    for t in th:
        t.join()
    eq(sorted((n, st) for n, (st, r) in res.items()), [("tg5", 200), ("tg6", 200), ("tg7", 200)],
       "three templates (%r)" % res)
    inodes = {name: snapshot_inodes(s, name) for name in res}
    eq(len({tuple(v) for v in inodes.values()}), 1, "one snapshot for the three (%r)" % inodes)
    (sb,) = fork(s, template="tg6")
    eq(sb["state"], "running", "a sandbox of tg6")
    eq(s.request("DELETE", "/v1/sandboxes/" + sb["id"])[0], 200, "delete")
    # A build that fails (no agent on the port in 2 s) fails the names that waited for
    # it too, with its reason, and leaves none of them.
    bad = {}

    def post_bad(name):
        bad[name] = s.request("POST", "/v1/templates",
                              spec(s, id=name, cmdline="testguest.mode=vsock", boot_timeout=2))
    th = [threading.Thread(target=post_bad, args=(n,)) for n in ("deaf1", "deaf2", "deaf3")]
    for t in th:
        t.start()
    for t in th:
        t.join()
    eq(sorted((st, r["error"]["code"]) for st, r in bad.values()), [(503, "engine_unavailable")] * 3,
       "three failed (%r)" % bad)
    msgs = [r["error"]["message"] for st, r in bad.values()]
    eq(sum("within 2 s" in m for m in msgs), 3, "each says why (%r)" % msgs)
    eq(sum("the same build as" in m for m in msgs), 2, "two waited for the one that failed (%r)" % msgs)
    st, r = s.request("GET", "/v1/templates")
    eq([x["id"] for x in r if x["id"].startswith("deaf")], [], "failed templates are gone")
    for n in bad:
        for p in (n, n + ".json"):
            if os.path.exists(os.path.join(s.state_dir, "templates", p)):
                raise AssertionError("left " + p)


def t_fork_template(s):
    sbs = fork(s, template="tg", n=3)
    eq([x["state"] for x in sbs], ["running"] * 3, "states")
    eq(s.io_workers(), [], "io-wq threads in serve")
    pids = set()
    for x in sbs:
        # The guest heard post_fork before the sandbox counted as ready.
        if "agent-stub: post_fork 1" not in console(s, x["id"]):
            raise AssertionError("no post_fork in %s's console:\n%s" % (x["id"], console(s, x["id"])))
        for f in ("vsock", "control", "vm.json", "console.log"):
            if not os.path.exists(os.path.join(sb_dir(s, x["id"]), f)):
                raise AssertionError("%s lacks %s" % (x["id"], f))
        pids.add(vm_pid(s, x["id"]))
    eq(len(pids), 3, "one VM process each")
    st, r = s.request("GET", "/v1/sandboxes/" + sbs[0]["id"])
    eq((st, r["state"]), (200, "running"), "get")
    st, r = s.request("GET", "/v1/sandboxes")
    eq(sorted(x["id"] for x in r if x["template_id"] == "tg"), sorted(x["id"] for x in sbs), "list")
    for x in sbs:
        st, _ = s.request("DELETE", "/v1/sandboxes/" + x["id"])
        eq(st, 200, "delete")
    for p in pids:
        if alive(p):
            raise AssertionError("VM %d still runs after DELETE" % p)
    eq(os.listdir(os.path.join(s.state_dir, "sandboxes")), [], "sandbox dirs after DELETE")
    # The pool's next VMs are armed with the template forked last (read and mapped ahead).
    snap = os.path.join(registry(s, "tg")["root"], "snapshot")

    def armed():
        n = 0
        for pid in vm_pids(s.state_dir):
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as f:
                    argv = f.read().decode().split("\0")
            except OSError:
                continue
            if "vm" in argv and "--arm" in argv and argv[argv.index("--arm") + 1] == snap:
                n += 1
        return n
    wait_until(lambda: armed() >= 2, 30, "two prepared VMs armed with tg's snapshot")


def t_jail(s):
    (sb,) = fork(s, template="tg")
    pid = vm_pid(s, sb["id"])
    for ns in ("mnt", "pid", "ipc", "uts", "net"):
        if os.readlink("/proc/%d/ns/%s" % (pid, ns)) == os.readlink("/proc/self/ns/" + ns):
            raise AssertionError("the VM shares the host's %s namespace" % ns)
    with open("/proc/%d/status" % pid) as f:
        status = f.read()
    if "NoNewPrivs:\t1" not in status:
        raise AssertionError("no_new_privs is not set")
    # mitos-vmm vm --seccomp: the allowlist filter of vmm/seccomp.c (mode 2: filter).
    if "Seccomp:\t2" not in status:
        raise AssertionError("the VM runs without its seccomp filter: %r" %
                             [l for l in status.splitlines() if l.startswith("Seccomp")])
    # No capabilities: uid 0 without privilege, and none to gain back (bounding set empty).
    caps = {l.split(":")[0]: int(l.split()[1], 16) for l in status.splitlines()
            if l.startswith(("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"))}
    if any(caps.values()):
        raise AssertionError("the VM process keeps capabilities: %r" % caps)
    with open("/proc/%d/cmdline" % pid) as f:
        if "\0--seccomp\0" not in f.read():
            raise AssertionError("the VM was not started with --seccomp")
    # Its /proc (the last mount there: the host's copy lies under it) is read-only: a
    # sysctl is writable by file mode alone.
    with open("/proc/%d/mountinfo" % pid) as f:
        procs = [l.split() for l in f if l.split()[4] == "/proc"]
    if not procs or "ro" not in procs[-1][5].split(","):
        raise AssertionError("the VM's /proc is not read-only: %r" % procs)
    if JAIL:
        uid = [l.split()[1:] for l in status.splitlines() if l.startswith(("Uid:", "Gid:"))]
        if any(int(v) == 0 for ids in uid for v in ids):
            raise AssertionError("a jailed VM runs as root: %r" % uid)
        # Of the host's /usr only the VMM's loader and libraries: no shell, no other program.
        seen = [p for p in ("etc/passwd", "dev", "sys", "home", "bin/sh", "usr/bin/env", "usr/share")
                if os.path.lexists("/proc/%d/root/%s" % (pid, p))]
        if seen:
            raise AssertionError("a jailed VM sees the host's %r" % seen)
        disk = spec(s)["rootfs"]
        if os.path.lexists("/proc/%d/root%s" % (pid, disk)):
            raise AssertionError("a jailed VM sees its disk image at %s" % disk)
        held = [os.readlink("/proc/%d/fd/%s" % (pid, fd)) for fd in os.listdir("/proc/%d/fd" % pid)]
        if disk not in held:
            raise AssertionError("the VM does not hold its disk %s open: %r" % (disk, held))
    out = "".join(s.stdout)
    dirs = cgroup_dirs(pid, "mitos-vms")
    if "; cgroup v2 " in out:
        with open(dirs["v2"] + "/memory.max") as f:
            eq(int(f.read()), (MEM + 96) << 20, "memory.max")
        with open(dirs["v2"] + "/cpu.max") as f:
            eq(f.read().split(), ["50000", "100000"], "cpu.max")
    elif "; cgroup v1 " in out:
        with open(dirs["memory"] + "/memory.limit_in_bytes") as f:
            eq(int(f.read()), (MEM + 96) << 20, "memory.limit_in_bytes")
        with open(dirs["cpu"] + "/cpu.cfs_quota_us") as f:
            eq(int(f.read()), 50000, "cpu.cfs_quota_us")
        if "mitos-vms" not in dirs["memory"] or "mitos-vms" not in dirs["cpu"]:
            raise AssertionError("not in a mitos-vms cgroup: %r" % dirs)
    else:
        print("     no cgroup limits on this host: %s" % [l for l in out.split("\n") if "isolation" in l])
    st, _ = s.request("DELETE", "/v1/sandboxes/" + sb["id"])
    eq(st, 200, "delete")
    for d in dirs.values():
        if os.path.exists(d):
            raise AssertionError("cgroup %s left after DELETE" % d)


def t_pause_resume(s):
    (sb,) = fork(s, template="tg")
    ctl = os.path.join(sb_dir(s, sb["id"]), "control")
    for action, want in (("pause", "paused"), ("pause", "paused"), ("resume", "running")):
        st, r = s.request("POST", "/v1/" + action, {"sandbox": sb["id"]})
        eq((st, r["status"]), (200, want), action)
        eq(control_call(ctl, {"cmd": "status"})["state"], want, "the VM itself after " + action)
    # A VMM that does not answer holds only its own pause: the server answers everything
    # else meanwhile, and a second pause of it is told one is on its way.
    pid = vm_pid(s, sb["id"])
    os.kill(pid, signal.SIGSTOP)
    try:
        first = {}

        def pause():
            first["r"] = s.request("POST", "/v1/pause", {"sandbox": sb["id"]})

        t = threading.Thread(target=pause)
        t.start()
        time.sleep(0.3)
        t0 = time.time()
        st, _ = s.request("GET", "/v1/health")
        took = time.time() - t0
        eq(st, 200, "health while a VMM is stopped")
        assert took < 1.0, "health took %.2f s behind a pause the VMM does not answer" % took
        st, r = s.request("POST", "/v1/pause", {"sandbox": sb["id"]})
        eq((st, r["error"]["code"]), (409, "sandbox_not_running"), "a second pause while one is on its way")
        assert "being paused or resumed" in r["error"]["message"], r
    finally:
        os.kill(pid, signal.SIGCONT)
    t.join(10)
    eq((first["r"][0], first["r"][1]["status"]), (200, "paused"), "the first pause, once the VMM answers")
    st, _ = s.request("DELETE", "/v1/sandboxes/" + sb["id"])
    eq(st, 200, "delete")


def t_fork_sandbox(s):
    (parent,) = fork(s, template="tg")
    layers = os.path.join(s.state_dir, "kvm", "layers")
    kids = fork(s, sandbox_id=parent["id"], n=2)
    eq([parent_of(s, k["id"]) for k in kids], [parent["id"]] * 2, "parent")
    eq([k["state"] for k in kids], ["running"] * 2, "states")
    eq(len(os.listdir(layers)), 2, "a layer per live fork")
    for k in kids:
        # The stub counts post_forks in its own memory: a child continues the parent's.
        c = console(s, k["id"])
        if "agent-stub: post_fork 2" not in c:
            raise AssertionError("child %s did not inherit the parent's memory:\n%s" % (k["id"], c))
    # The parent keeps running; grandchildren through a second layer.
    st, r = s.request("GET", "/v1/sandboxes/" + parent["id"])
    eq(r["state"], "running", "parent after the fork")
    (grand,) = fork(s, sandbox_id=kids[0]["id"])
    if "agent-stub: post_fork 3" not in console(s, grand["id"]):
        raise AssertionError("grandchild:\n" + console(s, grand["id"]))
    eq(len(os.listdir(layers)), 3, "three layers")
    # A paused parent forks and stays paused.
    s.request("POST", "/v1/pause", {"sandbox": parent["id"]})
    (k3,) = fork(s, sandbox_id=parent["id"])
    st, r = s.request("GET", "/v1/sandboxes/" + parent["id"])
    eq(r["state"], "paused", "paused parent after a fork")
    # Layers go with the last sandbox that needs them.
    for x in (parent, k3, kids[1]):
        s.request("DELETE", "/v1/sandboxes/" + x["id"])
    eq(len(os.listdir(layers)), 2, "layers the grandchild needs stay")
    s.request("DELETE", "/v1/sandboxes/" + kids[0]["id"])
    eq(len(os.listdir(layers)), 2, "still needed by the grandchild")
    s.request("DELETE", "/v1/sandboxes/" + grand["id"])
    eq(os.listdir(layers), [], "layers after the last delete")


def t_unsupported_ops(s):
    (sb,) = fork(s, template="tg")
    t0 = time.time()
    st, r = s.unary("Stat", sb["id"], {"path": "/"})
    eq((st, r["error"]["code"], r["error"]["cause"]), (501, "unimplemented", "agent: unsupported"), "Stat")
    st, ct, msgs = s.stream("ExecStream", sb["id"], {"command": "true"}, timeout=10)
    eq(msgs[-1][1]["error"]["mitos_code"], "unimplemented", "ExecStream")
    st, ct, msgs = s.stream("ReadFile", sb["id"], {"path": "/etc/hostname"}, timeout=10)
    eq(msgs[-1][1]["error"]["mitos_code"], "unimplemented", "ReadFile")
    if time.time() - t0 > 5:
        raise AssertionError("unsupported operations took %.1f s" % (time.time() - t0))
    st, r = s.request("GET", "/v1/sandboxes/" + sb["id"])
    eq(r["state"], "running", "still running")
    s.request("DELETE", "/v1/sandboxes/" + sb["id"])


def t_expiry_and_crash(s):
    a, b = fork(s, template="tg", n=2)
    pa, pb = vm_pid(s, a["id"]), vm_pid(s, b["id"])
    st, r = s.request("POST", "/v1/set_timeout", {"sandbox": a["id"], "timeout_seconds": 1})
    eq(st, 200, "set_timeout")
    wait_until(lambda: s.request("GET", "/v1/sandboxes/" + a["id"])[0] == 404, 5, "expiry")
    wait_until(lambda: not alive(pa), 5, "the expired VM to go")
    # A VM that dies on its own takes its sandbox with it.
    os.kill(pb, signal.SIGKILL)
    wait_until(lambda: s.request("GET", "/v1/sandboxes/" + b["id"])[0] == 404, 5, "the crashed sandbox to go")
    eq(os.listdir(os.path.join(s.state_dir, "sandboxes")), [], "nothing left")
    eq(os.listdir(os.path.join(s.state_dir, "kvm", "layers")), [], "no layers")


def t_many(s):
    # More at once than the pool holds: the rest get VMs started on demand.
    sbs = fork(s, template="tg", n=8)
    eq(len(set(vm_pid(s, x["id"]) for x in sbs)), 8, "8 VMs")
    for x in sbs:
        s.request("DELETE", "/v1/sandboxes/" + x["id"])
    eq(os.listdir(os.path.join(s.state_dir, "sandboxes")), [], "all gone")


def t_clone_uniqueness(s):
    """100 clones of one snapshot: each has a random state of its own (the entropy serve
    sent at post_fork, stirred into the state every clone inherits from the template),
    and each was told the host's clock while it was being made."""
    rng, ids = {}, []
    for _ in range(4):
        t0 = time.time()
        batch = fork(s, template="tg", n=25)
        t1 = time.time()
        for x in batch:
            ids.append(x["id"])
            c = console(s, x["id"])
            m = re.search(r"agent-stub: post_fork (\d+) rng ([0-9a-f]+) clock (\d+)", c)
            assert m, "no post_fork line in %s's console:\n%s" % (x["id"], c[-600:])
            eq(m.group(1), "1", "post_forks a clone of the template heard")
            rng[x["id"]] = m.group(2)
            clock = int(m.group(3)) / 1e9
            assert t0 - 0.05 <= clock <= t1 + 0.05, "clock %.3f outside the fork's %.3f..%.3f" % (clock, t0, t1)
    eq(len(set(rng.values())), 100, "distinct random states among 100 clones")
    for sid in ids:
        s.request("DELETE", "/v1/sandboxes/" + sid)


def percentile(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def t_latency(s):
    n = int(os.environ.get("MITOS_KVM_LATENCY_RUNS", "40"))
    lat = []
    c = s.conn()
    for i in range(n):
        wait_until(lambda: pool_ready(s) >= 2, 20, "a warm pool")
        t0 = time.perf_counter()
        c.request("POST", "/v1/fork", body=json.dumps({"template": "tg", "id": "lat-%d" % i}),
                  headers={"Content-Type": "application/json"})
        resp = c.getresponse()
        body = json.loads(resp.read())
        lat.append((time.perf_counter() - t0) * 1000)
        eq(resp.status, 200, "fork %d" % i)
        c.request("DELETE", "/v1/sandboxes/" + body["id"])
        c.getresponse().read()
    c.close()
    print("     create-sandbox-warm-p50: %.2f ms" % percentile(lat, 50))
    print("     create-sandbox-warm-p99: %.2f ms (%d runs, POST /v1/fork from the template until it "
          "answered: restored, agent connected, post_fork done)" % (percentile(lat, 99), n))
    t0 = time.perf_counter()
    sbs = fork(s, template="tg", n=8)
    print("     create-8-at-once: %.2f ms" % ((time.perf_counter() - t0) * 1000))
    for x in sbs:
        s.request("DELETE", "/v1/sandboxes/" + x["id"])


def starts_beside(s, n, prefix, what, deletes=False):
    """Milliseconds each of n forks of tg on a warm pool took (and each delete, with
    deletes), while something else is in flight."""
    lat = []
    for i in range(n):
        wait_until(lambda: pool_ready(s) >= 1, 20, "a warm pool")
        t0 = time.perf_counter()
        st, r = s.request("POST", "/v1/fork", {"template": "tg", "id": "%s-%d" % (prefix, i)})
        lat.append((time.perf_counter() - t0) * 1000)
        eq(st, 200, "fork %d %s (%r)" % (i, what, r))
        t0 = time.perf_counter()
        eq(s.request("DELETE", "/v1/sandboxes/" + r["id"])[0], 200, "delete %d" % i)
        if deletes:
            lat.append((time.perf_counter() - t0) * 1000)
    return lat


def t_builds_beside_starts(s):
    """Four template builds in flight (guests whose agent never answers, so each holds
    its build until the boot timeout) leave sandbox starts and deletes as fast as ever:
    builds have their own workers (issue 11)."""
    res = []

    def post(i):
        res.append(s.request("POST", "/v1/templates",
                             spec(s, id="slow-%d" % i, boot_timeout=25,
                                  cmdline="testguest.mode=vsock")))
    th = [threading.Thread(target=post, args=(i,)) for i in range(4)]
    for t in th:
        t.start()
    wait_until(lambda: sum(1 for i in range(4) if os.path.exists(
        os.path.join(s.state_dir, "templates", "slow-%d.json" % i))) == 4, 10, "four builds started")
    time.sleep(1)
    lat = starts_beside(s, 5, "beside", "beside four builds", deletes=True)
    building = sum(1 for t in th if t.is_alive())
    print("     create and delete beside %d template builds: max %.1f ms" % (building, max(lat)))
    if max(lat) > 3000:
        raise AssertionError("a start or delete waited for the builds: %r ms" % lat)
    eq(building, 4, "the four builds were in flight the whole time")
    for t in th:
        t.join()
    eq(sorted(st for st, r in res if st != 200), [st for st, r in res], "the builds failed (%r)" % res)
    for r in res:
        if "agent" not in json.dumps(r[1]):
            raise AssertionError("a build failed for another reason: %r" % (r,))


def t_unanswering_vm_beside_starts(s):
    """A VM that does not answer (stopped here, as an escaped VMM may not answer) with
    four forks of it waiting for its snapshot: other sandboxes' starts are as fast as
    ever (the calls into VMs, and the children that wait for them, have their own
    workers; they took the four restore workers for two minutes before)."""
    (a,) = fork(s, template="tg")
    pid = vm_pid(s, a["id"])
    os.kill(pid, signal.SIGSTOP)
    res = []
    try:
        th = [threading.Thread(target=lambda i=i: res.append(
            s.request("POST", "/v1/sandboxes/%s/fork" % a["id"], {"id": "stuck-%d" % i}))) for i in range(4)]
        for t in th:
            t.start()
        time.sleep(2)
        lat = starts_beside(s, 3, "free", "beside the stuck ones")
        print("     starts beside four forks of a VM that does not answer: max %.1f ms" % max(lat))
        if max(lat) > 3000:
            raise AssertionError("a start waited for the stuck VM: %r ms" % lat)
    finally:
        os.kill(pid, signal.SIGCONT)
    for t in th:
        t.join()
    for st, r in res:
        if st == 200:
            s.request("DELETE", "/v1/sandboxes/" + r["id"])
    s.request("DELETE", "/v1/sandboxes/" + a["id"])


def t_restart_and_stop(_):
    s = kvm_server()
    try:
        template(s)
        template(s, id="tg3")  # tg's snapshot, shared (t_shared_snapshot)
        a, b, c = fork(s, template="tg", n=3)
        s.request("POST", "/v1/pause", {"sandbox": b["id"]})
        (k,) = fork(s, sandbox_id=a["id"])
        wait_until(lambda: pool_ready(s) >= 2, 20, "a warm pool")
        old_pool = [p for p in vm_pids(s.state_dir) if p not in
                    [vm_pid(s, x["id"]) for x in (a, b, c, k)]]
        pc = vm_pid(s, c["id"])
        s.stop(signal.SIGKILL)
        # While serve is away one VM dies: its record must go, the rest stay.
        os.kill(pc, signal.SIGKILL)
        s2 = kvm_server(state_dir=s.state_dir)
        try:
            if not any("re-adopted 3 sandbox(es)" in l for l in s2.stdout):
                raise AssertionError("start-up: %r" % s2.stdout)
            def states():
                return {x["id"]: s2.request("GET", "/v1/sandboxes/" + x["id"])[1]["state"]
                        for x in s2.request("GET", "/v1/sandboxes")[1]}
            wait_until(lambda: "starting" not in states().values(), 10, "the agents to answer again")
            eq(states(), {a["id"]: "running", b["id"]: "paused", k["id"]: "running"}, "re-adopted")
            wait_until(lambda: not any(alive(p) for p in old_pool), 5, "the old pool to be gone")
            # The re-adopted ones work: fork one (its layer chain was taken over), resume one.
            (k2,) = fork(s2, sandbox_id=k["id"])
            if "agent-stub: post_fork 3" not in console(s2, k2["id"]):
                raise AssertionError("fork of a re-adopted child:\n" + console(s2, k2["id"]))
            st, r = s2.request("POST", "/v1/resume", {"sandbox": b["id"]})
            eq(r["status"], "running", "resume after re-adoption")
            # A graceful stop leaves no VM, sandbox, layer, prepared VM or cgroup.
            pids = vm_pids(s2.state_dir)
            cgs = [d for p in pids for d in cgroup_dirs(p, "mitos-vms").values()]
            eq(s2.stop(), 0, "graceful stop")
            wait_until(lambda: not vm_pids(s2.state_dir), 5, "every VM to end")
            for sub in ("sandboxes", "kvm/pool", "kvm/layers"):
                eq(os.listdir(os.path.join(s2.state_dir, sub)), [], sub + " after stop")
            left = [d for d in cgs if os.path.exists(d)]
            eq(left, [], "cgroups after stop")
        finally:
            s2.stop()
        # The template survives restarts.
        s3 = kvm_server(state_dir=s.state_dir)
        try:
            st, r = s3.request("GET", "/v1/templates")
            eq(sorted((x["id"], x["ready"]) for x in r), [("tg", True), ("tg3", True)], "templates after restart")
            for name in ("tg", "tg3"):
                (x,) = fork(s3, template=name)
                eq(x["state"], "running", "fork of %s after restart" % name)
            eq(s3.stop(), 0, "graceful stop")
        finally:
            s3.stop()
    finally:
        s.cleanup()
        subprocess.call(["rm", "-rf", s.state_dir + "-disk"])


def t_snapshot_outlives(_):
    """A snapshot (E2B's createSnapshot) is a layer the engine keeps: its sandboxes
    continue the sandbox's memory after the sandbox is gone and after a stop of serve;
    deleting it leaves the layer to the sandboxes that still need it."""
    s = kvm_server()
    layers = os.path.join(s.state_dir, "kvm", "layers")
    try:
        template(s)
        (a,) = fork(s, template="tg")
        st, r = s.request("POST", "/sandboxes/%s/snapshots" % a["id"], {"name": "snap"})
        eq((st, r), (201, {"snapshotID": "snap:default", "names": ["snap"]}), "snapshot")
        st, r = s.request("GET", "/v1/sandboxes/" + a["id"])
        eq(r["state"], "running", "the source after its snapshot")
        s.request("DELETE", "/v1/sandboxes/" + a["id"])
        eq(len(os.listdir(layers)), 1, "the layer outlives its sandbox")

        def continues(srv):
            (k,) = fork(srv, template="snap")
            # The stub counts post_forks in its memory: 1 in the source, 2 in its snapshot's.
            if "agent-stub: post_fork 2" not in console(srv, k["id"]):
                raise AssertionError("a sandbox of the snapshot lacks its memory:\n" + console(srv, k["id"]))
            return k
        continues(s)
        eq(s.stop(), 0, "graceful stop")
        eq(len(os.listdir(layers)), 1, "the layer stays across a stop")
        s2 = kvm_server(state_dir=s.state_dir)
        try:
            k2 = continues(s2)
            st, _ = s2.request("DELETE", "/templates/snap:default")
            eq(st, 204, "delete")
            eq(len(os.listdir(layers)), 1, "its sandbox still holds the layer")
            s2.request("DELETE", "/v1/sandboxes/" + k2["id"])
            eq(os.listdir(layers), [], "the layer after its last sandbox")
            eq(s2.stop(), 0, "graceful stop")
        finally:
            s2.stop()
    finally:
        s.cleanup()
        subprocess.call(["rm", "-rf", s.state_dir + "-disk"])


def t_layer_chain_is_serves(_):
    """A layer's chain is serve's own record (layer.json, written after the seal), never
    what its VM wrote: a config.json naming a parent out of the layers (as an escaped
    VMM could write it before the seal) once made a later serve remove that directory
    with the layer."""
    s = kvm_server()
    layers = os.path.join(s.state_dir, "kvm", "layers")
    victim = os.path.join(s.state_dir, "victim")
    try:
        template(s)
        (a,) = fork(s, template="tg")
        st, r = s.request("POST", "/sandboxes/%s/snapshots" % a["id"], {"name": "snap"})
        eq(st, 201, "snapshot (%r)" % (r,))
        s.request("DELETE", "/v1/sandboxes/" + a["id"])
        eq(s.stop(), 0, "graceful stop")
        (layer,) = os.listdir(layers)
        assert "layer.json" in os.listdir(os.path.join(layers, layer)), os.listdir(os.path.join(layers, layer))
        os.makedirs(victim)
        open(os.path.join(victim, "kept"), "w").close()
        cfg = os.path.join(layers, layer, "config.json")
        with open(cfg) as f:
            c = json.load(f)
        c["parent"] = layers + "/../../victim"
        os.chmod(cfg, 0o644)
        with open(cfg, "w") as f:
            json.dump(c, f)
        s2 = kvm_server(state_dir=s.state_dir)
        try:
            eq(s2.request("DELETE", "/templates/snap:default")[0], 204, "delete")
            wait_until(lambda: not os.listdir(layers), 10, "the layer removed")
            eq(os.listdir(victim), ["kept"], "a parent its VM named is nothing of serve's")
        finally:
            s2.stop()
    finally:
        s.cleanup()
        subprocess.call(["rm", "-rf", s.state_dir + "-disk"])


def t_linux_guest(_):
    """The same lifecycle with a real Linux guest and mitos-agent as its init, when a guest
    kernel is already built (firmware/build-kernel.sh; not built here: it takes minutes)."""
    from mitos_test import Skip
    root = os.path.join(HERE, "..", "..")
    r = subprocess.run(["readelf", "-l", AGENT], capture_output=True, text=True)
    if r.returncode != 0 or "INTERP" in r.stdout:
        raise Skip("the agent is dynamically linked (sanitizer build); the guest needs a static one")
    s = kvm_server(extra=["--kvm-pool", "1"])
    try:
        pvm = any("emulation-only" in l for l in s.stdout)
        cache = os.environ.get("MITOS_CACHE") or os.path.join(os.environ.get("HOME", "/root"), ".cache", "mitos")
        kernel = os.path.join(cache, "kernel", "current-pvm" if pvm else "current", "vmlinux")
        if not os.path.exists(kernel):
            raise Skip("no guest kernel at %s (firmware/build-kernel.sh%s builds it)" %
                       (kernel, " --variant pvm" if pvm else ""))
        initrd = s.state_dir + "-initrd.cpio"
        subprocess.run([os.path.join(root, "firmware", "build-initramfs.sh"), "--agent", AGENT, "--out", initrd],
                       check=True, timeout=600, capture_output=True)
        if pvm:
            with open(os.path.join(root, "firmware", "guest-pvm.cmdline")) as f:
                cmdline = " ".join(l.strip() for l in f if l.strip() and not l.startswith("#"))
        else:
            cmdline = "console=ttyS0 panic=-1 reboot=k rdinit=/init"
        t0 = time.time()
        # The template's own deadline is the boot budget of this machine; the client
        # waits for it (and the snapshot after it).
        boot = int(budget.seconds(VMM, 5, budget.BOOT_MINSTR))
        # Its workload (the contract's): a web server started before the snapshot, so
        # every child wakes with it serving. It starts once the guest is up, so it gets a
        # quarter of the boot budget: a workload the PVM defect crashed (below) costs
        # that long, not a whole boot.
        workload = {"command": ["/bin/busybox", "sh", "-c", "echo hi-from-the-workload > /tmp/index.html && "
                                "exec /bin/busybox httpd -f -p 127.0.0.1:8080 -h /tmp"],
                    "ready": {"port": 8080, "path": "/", "expect": 200,
                              "timeout_seconds": min(3600, max(60, boot // 4))}}

        def build(tpl_id, wl):
            c = s.conn(timeout=2 * boot + 60)
            body = {"id": tpl_id, "kernel": kernel, "initrd": initrd, "cmdline": cmdline, "mem_mib": 128,
                    "boot_timeout": boot}
            if wl:
                body["workload"] = wl
            c.request("POST", "/v1/templates", body=json.dumps(body), headers={"Content-Type": "application/json"})
            resp = c.getresponse()
            st, r = resp.status, json.loads(resp.read())
            c.close()
            return st, r
        st, r = build("linux", workload)
        served = st == 200
        if not served and pvm and "workload did not answer" in json.dumps(r):
            # Emulation-only KVM lets vector state leak between guest tasks (issue 10,
            # snapshot/README.md), which can crash a guest process: said, not hidden,
            # and the rest of the case runs on a template without the workload.
            print("     NOTE: the workload did not come up on this emulation-only host: %s" % r["error"]["message"])
            st, r = build("linux", None)
        eq(st, 200, "template (%r)" % (r,))
        print("     linux template built in %.1f s" % (time.time() - t0))
        t0 = time.time()
        (sb,) = fork(s, template="linux")
        print("     linux sandbox created in %.0f ms" % ((time.time() - t0) * 1000))

        def sh(sid, cmd):
            st, ct, msgs = s.stream("ExecStream", sid, {"command": "/bin/sh", "args": ["-c", cmd]}, timeout=120)
            out = b"".join(__import__("base64").b64decode(m["stdout"]) for f, m in msgs if "stdout" in m)
            end = exit_of(msgs)
            eq(end and end["exitCode"], 0, "exit code of %r (%r)" % (cmd, msgs))
            return out.decode()
        out = sh(sb["id"], "echo hello; echo kept > /tmp/f; cat /proc/sys/kernel/random/uuid; date +%s")
        lines = out.split()
        eq(lines[0], "hello", "exec output")
        if abs(int(lines[2]) - time.time()) > 30:
            raise AssertionError("the guest's clock is off: %s" % lines[2])
        kids = fork(s, sandbox_id=sb["id"], n=2)
        outs = [sh(k["id"], "cat /tmp/f; cat /proc/sys/kernel/random/uuid").split() for k in kids]
        eq([o[0] for o in outs], ["kept", "kept"], "children see the parent's files")
        for k in kids if served else []:
            st, _, data = s.request("GET", "/v1/sandboxes/%s/expose/8080/" % k["id"], raw=True)
            eq((st, data), (200, b"hi-from-the-workload\n"), "the template's workload serves in a child")
        if len({lines[1], outs[0][1], outs[1][1]}) != 3:
            raise AssertionError("clones share random numbers: %r %r" % (lines, outs))
        # The guest as a whole: its process table, vitals from its own /proc, a tar of a tree.
        st, r = s.unary("Processes", sb["id"], {})
        eq(st, 200, "Processes in the guest (%r)" % (r,))
        assert any(p.get("pid") == 1 for p in r["processes"]), r
        st, ct, msgs = s.stream("Vitals", sb["id"], {"intervalSeconds": 1}, timeout=120,
                                headers={"Connect-Timeout-Ms": "4000"})
        v = [m for f, m in msgs if f == 0 and "sampledAtUnix" in m]
        assert v and (32 << 20) < int(v[0]["memTotalBytes"]) <= (128 << 20), msgs
        st, ct, msgs = s.stream("Archive", sb["id"], {"path": "/tmp", "direction": "DOWNLOAD"}, timeout=120)
        tar = b"".join(__import__("base64").b64decode(m["data"]) for f, m in msgs if f == 0 and "data" in m)
        with __import__("tarfile").open(fileobj=__import__("io").BytesIO(tar)) as t:
            eq(t.extractfile("f").read(), b"kept\n", "Archive of the guest's /tmp")
        eq(s.stop(), 0, "graceful stop")
        eq(vm_pids(s.state_dir), [], "VMs after stop")
    finally:
        s.cleanup()
        for p in (s.state_dir + "-initrd.cpio",):
            if os.path.exists(p):
                os.unlink(p)


def main():
    if os.geteuid() != 0 or not os.path.exists("/dev/kvm"):
        print("SKIP: the kvm engine tests need root and /dev/kvm")
        return 77
    r = Runner()
    shared = kvm_server()
    tests = [("startup_message", t_startup_message), ("template_build", t_template_build),
             ("template_errors", t_template_errors), ("concurrent_template", t_concurrent_template),
             ("shared_snapshot", t_shared_snapshot), ("shared_while_building", t_shared_while_building),
             ("fork_template", t_fork_template), ("jail", t_jail), ("pause_resume", t_pause_resume),
             ("fork_sandbox", t_fork_sandbox), ("unsupported_ops", t_unsupported_ops),
             ("expiry_and_crash", t_expiry_and_crash), ("many", t_many), ("clone_uniqueness", t_clone_uniqueness),
             ("latency", t_latency), ("builds_beside_starts", t_builds_beside_starts),
             ("unanswering_vm_beside_starts", t_unanswering_vm_beside_starts)]
    try:
        r.run_all(tests, ONLY, shared)
        eq(shared.proc.poll(), None, "serve is still running")
    finally:
        state = shared.state_dir
        rc = shared.stop()
        if rc not in (0, None):
            print("FAIL serve exited with %s; its stderr:\n%s" % (rc, shared.stderr()[-4000:]))
            r.failed += 1
        elif r.failed:
            # A sandbox that failed to start is gone with its directory; serve's log
            # keeps why (the VM's exit, the restore's or the agent's error).
            print("serve's stderr, for the failures above:\n%s" % shared.stderr()[-4000:])
        left = vm_pids(state)
        if left:
            print("FAIL VM processes left after shutdown: %r" % left)
            r.failed += 1
        shared.cleanup()
        subprocess.call(["rm", "-rf", state + "-disk"])
    r.run_all((("restart_and_stop", t_restart_and_stop), ("snapshot_outlives", t_snapshot_outlives),
               ("layer_chain_is_serves", t_layer_chain_is_serves),
               ("linux_guest", t_linux_guest)), ONLY, None)
    return r.finish()


if __name__ == "__main__":
    sys.exit(main())
