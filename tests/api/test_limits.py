#!/usr/bin/env python3
"""Per-sandbox memory and CPU limits of the process engine (api/engines/cgroup.c): the template's
`memory_max_mib` and `cpu_percent` become a cgroup per sandbox (v2, or v1 on hybrid
hosts) that the sandbox's init enters before it runs anything. A command over the memory
limit is OOM-killed (ExecStream reports the signal), a busy loop is throttled, the cgroup
outlives a restart of serve (re-adoption) and is gone after DELETE, expiry and a crash.
Stdlib only.

usage: test_limits.py MITOS_VMM MITOS_AGENT [TEST-NAME-SUBSTRING...]
Exits 77 when not root or when this host gives serve no writable cgroups (neither v2
with the memory and cpu controllers nor v1)."""
import json
import os
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mitos_test import (Runner, Server, cgroup_dirs, eq, exec_output, exit_of, wait_running,  # noqa: E402
                        wait_until)

VMM, AGENT = sys.argv[1], sys.argv[2]
ONLY = sys.argv[3:]
PARENT = "mitos-sandboxes"
MEM, CPU = 64, 20


def limits_line(s):
    return next((ln.strip() for ln in s.stdout if ln.startswith("sandbox limits: ")), "")


def template(s, name="lim", **kw):
    body = {"id": name, "memory_max_mib": MEM, "cpu_percent": CPU}
    body.update(kw)
    st, r = s.request("POST", "/v1/templates", body)
    if st != 200:
        raise AssertionError("template: %s %r" % (st, r))
    return r


def spec_of(s, name):
    """The engine's limits, as the registry keeps them (the contract's answer has none)."""
    with open(os.path.join(s.state_dir, "templates", name + ".json")) as f:
        return json.load(f)["spec"]


def fork(s, sid, tpl="lim"):
    st, r = s.request("POST", "/v1/fork", {"template": tpl, "id": sid})
    eq(st, 200, "fork (%r)" % (r,))


def init_pid(s, sid):
    with open(os.path.join(s.state_dir, "sandboxes", sid, "sandbox.json")) as f:
        return json.load(f)["pid"]


def run(s, sid, cmd, timeout=60):
    out, msgs = exec_output(s, sid, {"command": cmd, "timeoutSeconds": timeout})
    end = exit_of(msgs)
    if not end:
        raise AssertionError("no exit message: %r" % msgs)
    return out, end


def read(path):
    with open(path) as f:
        return f.read().strip()


def limit_files(dirs):
    """(memory limit file, CPU limit file) of one sandbox's cgroups."""
    if "v2" in dirs:
        return dirs["v2"] + "/memory.max", dirs["v2"] + "/cpu.max", dirs["v2"] + "/cpu.stat"
    return (dirs["memory"] + "/memory.limit_in_bytes", dirs["cpu"] + "/cpu.cfs_quota_us",
            dirs["cpu"] + "/cpu.stat")


def gone(dirs):
    return not any(os.path.exists(d) for d in dirs.values())


# ---------------------------------------------------------------- tests

def t_template_fields(s):
    template(s)
    eq(spec_of(s, "lim"), {"memory_max_mib": MEM, "cpu_percent": CPU, "pids_max": 1024}, "spec kept")
    st, r = s.request("POST", "/v1/templates", {"id": "dflt"})
    eq(st, 200, "default template")
    eq(spec_of(s, "dflt"), {"memory_max_mib": 1024, "cpu_percent": 100, "pids_max": 1024}, "defaults")
    for body in ({"memory_max_mib": 8}, {"memory_max_mib": "64"}, {"cpu_percent": 0},
                 {"cpu_percent": 6401}, {"memory_max_mib": 64.5}, {"pids_max": 15}, {"pids_max": 1 << 23}):
        body.update(id="bad")
        st, r = s.request("POST", "/v1/templates", body)
        eq((st, r["error"]["code"]), (400, "invalid_input"), "template %r" % body)
    st, r = s.request("GET", "/v1/templates")
    eq(sorted(x["id"] for x in r), ["dflt", "lim"], "listed")


def t_init_in_cgroup(s):
    fork(s, "in")
    pid = init_pid(s, "in")
    dirs = cgroup_dirs(pid, PARENT)
    if not dirs:
        raise AssertionError("the init %d is not in a %s cgroup: %s" % (pid, PARENT, read("/proc/%d/cgroup" % pid)))
    mem, cpu, _ = limit_files(dirs)
    eq(int(read(mem)), MEM << 20, mem)
    eq(read(cpu).split()[0], str(CPU * 1000), cpu)
    pids = os.path.join(dirs.get("pids", dirs.get("v2", "")), "pids.max")
    if os.path.exists(pids):  # where the host has the pids controller (serve says so)
        eq(read(pids), "1024", pids)
    # Everything the sandbox runs is inside: its init, the agent, the command.
    out, end = run(s, "in", "cat /proc/self/cgroup")
    eq(end.get("exitCode"), 0, "cat")
    for d in dirs.values():
        rel = d.split(PARENT, 1)[1]
        # Inside a cgroup namespace rooted at the sandbox's cgroup (v2), that is "/".
        if rel not in out and "0::/\n" not in out:
            raise AssertionError("the command runs outside %s: %s" % (d, out))
        procs = read(os.path.join(d, "cgroup.procs")).split()
        if str(pid) not in procs or len(procs) < 2:
            raise AssertionError("init %d and its agent should be in %s: %r" % (pid, d, procs))
    s.request("DELETE", "/v1/sandboxes/in")


def t_oom_kill(s):
    fork(s, "oom")
    out, end = run(s, "oom", "python3 -c 'x = bytearray(16 << 20); print(len(x))'")
    eq((out.strip(), end.get("exitCode")), (str(16 << 20), 0), "16 MiB fits")
    t0 = time.time()
    out, end = run(s, "oom", "python3 -c 'x = bytearray(200 << 20); x[::4096] = b\"x\" * len(x[::4096]); "
                             "print(len(x))'")
    eq(end["exitCode"], 128 + 9, "200 MiB under a 64 MiB limit: %r" % end)
    print("     OOM-killed in %.2f s" % (time.time() - t0))
    # The sandbox survives its command's OOM kill.
    out, end = run(s, "oom", "echo alive")
    eq(out, "alive\n", "the sandbox after the OOM kill")
    s.request("DELETE", "/v1/sandboxes/oom")


def t_cpu_throttled(s):
    fork(s, "cpu")
    dirs = cgroup_dirs(init_pid(s, "cpu"), PARENT)
    _, _, stat = limit_files(dirs)
    before = dict(ln.split() for ln in read(stat).splitlines())
    t0 = time.time()
    out, end = run(s, "cpu", "timeout 1 sh -c 'while :; do :; done'; cat /proc/$$/stat")
    wall = time.time() - t0
    # The CPU time of the shell's waited-for children: cutime and cstime (fields 16, 17).
    fields = out.rsplit(")", 1)[1].split()
    cpu_s = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    after = dict(ln.split() for ln in read(stat).splitlines())
    throttled = int(after["nr_throttled"]) - int(before["nr_throttled"])
    print("     busy loop: %.2f s of CPU in %.2f s (limit %d%%), throttled %d times" % (cpu_s, wall, CPU, throttled))
    if throttled <= 0:
        raise AssertionError("never throttled: %r" % after)
    if cpu_s > 0.6:
        raise AssertionError("a 1 s busy loop got %.2f s of CPU under a %d%% limit" % (cpu_s, CPU))
    s.request("DELETE", "/v1/sandboxes/cpu")


def t_removed_on_delete_expiry_crash(s):
    for sid in ("del", "exp", "crash"):
        fork(s, sid)
    dirs = {sid: cgroup_dirs(init_pid(s, sid), PARENT) for sid in ("del", "exp", "crash")}
    for sid, d in dirs.items():
        if not d or gone(d):
            raise AssertionError("no cgroup for %s: %r" % (sid, d))
    st, _ = s.request("DELETE", "/v1/sandboxes/del")
    eq(st, 200, "delete")
    if not gone(dirs["del"]):
        raise AssertionError("cgroup left after DELETE: %r" % dirs["del"])
    st, _ = s.request("POST", "/v1/set_timeout", {"sandbox": "exp", "timeout_seconds": 1})
    eq(st, 200, "set_timeout")
    os.kill(init_pid(s, "crash"), signal.SIGKILL)
    wait_until(lambda: gone(dirs["exp"]) and gone(dirs["crash"]), 10, "cgroups of the expired and crashed sandboxes")
    wait_until(lambda: s.request("GET", "/v1/sandboxes")[1] == [], 5, "no sandboxes")


def t_readoption_keeps_cgroup():
    st_dir = tempfile.mkdtemp(prefix="mitos-limits-", dir="/var/tmp")
    s = Server(VMM, AGENT, state_dir=st_dir)
    try:
        template(s)
        fork(s, "keep")
        pid = init_pid(s, "keep")
        dirs = cgroup_dirs(pid, PARENT)
        s.stop(signal.SIGKILL)
        s2 = Server(VMM, AGENT, state_dir=st_dir)
        try:
            wait_running(s2, "keep")
            eq(cgroup_dirs(pid, PARENT), dirs, "the same cgroup after the restart")
            out, end = run(s2, "keep", "python3 -c 'x = bytearray(200 << 20)'")
            eq(end["exitCode"], 128 + 9, "still limited after re-adoption: %r" % end)
            st, _ = s2.request("DELETE", "/v1/sandboxes/keep")
            eq(st, 200, "delete")
            if not gone(dirs):
                raise AssertionError("cgroup left after DELETE of a re-adopted sandbox: %r" % dirs)
            fork(s2, "last")
            last = cgroup_dirs(init_pid(s2, "last"), PARENT)
        finally:
            eq(s2.stop(), 0, "graceful stop")
        if not gone(last):
            raise AssertionError("cgroup left after a graceful stop: %r" % last)
    finally:
        s.stop()
        shutil.rmtree(st_dir, ignore_errors=True)


def main():
    r = Runner()
    if os.geteuid() != 0:
        print("SKIP: the process engine needs root")
        return 77
    s = Server(VMM, AGENT)
    line = limits_line(s)
    if "cgroup v2 " not in line and "cgroup v1 " not in line:
        s.cleanup()
        print("SKIP: serve has no writable cgroups here (neither cgroup v2 with the memory and cpu "
              "controllers nor cgroup v1): %s" % (line or "no 'sandbox limits:' line at start"))
        return 77
    print("serve: %s" % line)
    tests = [("template_fields", t_template_fields), ("init_in_cgroup", t_init_in_cgroup),
             ("oom_kill", t_oom_kill), ("cpu_throttled", t_cpu_throttled),
             ("removed_on_delete_expiry_crash", t_removed_on_delete_expiry_crash)]
    try:
        r.run_all(tests, ONLY, s)
    finally:
        r.stop_server(s)
    r.run_all([("readoption_keeps_cgroup", t_readoption_keeps_cgroup)], ONLY)
    return r.finish()


if __name__ == "__main__":
    sys.exit(main())
