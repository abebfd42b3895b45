#!/usr/bin/env python3
"""Adversarial suite of the process engine (api/engines/engine_process.c, agent/sandbox_init.c):
from inside a sandbox, as its root, every known way out is tried and must be refused,
with the sandbox and serve still healthy afterwards: mounts (tmpfs, proc, cgroup v1,
remounting /sys, a user namespace of its own), sysctl and other host knobs, block
devices, cgroup escape, a scan of every visible process's memory, environment and
command line for serve's bearer token, the host's kernel log and keyrings, ptrace of
PID 1, serve's loopback port, a fork bomb (pids.max) and a symlinked agent socket after
a restart of serve. From the network side: a client that pipelines requests and never
reads the answers, before and after authentication.

usage: test_isolation.py MITOS_VMM MITOS_AGENT [TEST-NAME-SUBSTRING...]
Exits 77 when not root (the process engine needs it)."""
import base64
import json
import os
import secrets
import select
import signal
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mitos_test import Runner, Server, Skip, envelope, eq, exec_output, exit_of, wait_until  # noqa: E402

VMM, AGENT = sys.argv[1], sys.argv[2]
ONLY = sys.argv[3:]
TOKEN = "mitos-isolation-" + secrets.token_hex(16)
PIDS_MAX = 64


def sh(s, sid, cmd, timeout=60):
    """(stdout, exit code) of cmd run by bash in sandbox sid."""
    out, msgs = exec_output(s, sid, {"command": cmd, "timeoutSeconds": timeout})
    end = exit_of(msgs)
    if end is None:
        raise AssertionError("no exit message: %r" % msgs)
    return out, end["exitCode"]


def py(s, sid, code, timeout=60):
    return sh(s, sid, "python3 - <<'PYEOF'\n" + code + "\nPYEOF", timeout)


def fork(s, sid, tpl="iso"):
    st, r = s.request("POST", "/v1/fork", {"template": tpl, "id": sid})
    eq(st, 200, "fork (%r)" % (r,))


def healthy(s, sid):
    """The sandbox still runs commands and serve still answers."""
    out, code = sh(s, sid, "echo alive")
    eq((out, code), ("alive\n", 0), "sandbox healthy")
    st, r = s.request("GET", "/v1/sandboxes/" + sid)
    eq((st, r.get("state")), (200, "running"), "serve healthy")


def refused(s, sid, cmds):
    """Runs each shell command; each must fail. Returns nothing, raises with the ones that worked."""
    worked = []
    for c in cmds:
        out, code = sh(s, sid, c + " >/dev/null 2>&1; echo $?")
        if out.strip() == "0":
            worked.append(c)
    if worked:
        raise AssertionError("allowed inside a sandbox: %r" % worked)


def host_pids_of(s, sid):
    """Host pids of the sandbox's init and every process under it."""
    with open(os.path.join(s.state_dir, "sandboxes", sid, "sandbox.json")) as f:
        init = json.load(f)["pid"]
    kids, found = {}, [init]
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    i = 0
    while i < len(found):
        found += kids.get(found[i], [])
        i += 1
    return found


def status_field(pid, name):
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            if ln.startswith(name + ":"):
                return ln.split(":", 1)[1].split()
    return []


# ---------------------------------------------------------------- tests

SCAN = r'''
import os, re
tok = os.environ["T"][::-1].encode()
hits = []
for d in os.listdir("/proc"):
    if not d.isdigit():
        continue
    for name in ("environ", "cmdline"):
        try:
            if tok in open("/proc/%s/%s" % (d, name), "rb").read():
                hits.append((d, name))
        except OSError:
            pass
    try:
        maps = open("/proc/%s/maps" % d).read().splitlines()
        mem = open("/proc/%s/mem" % d, "rb", buffering=0)
    except OSError:
        continue
    for ln in maps:
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) r", ln)
        if not m or "[vvar" in ln or "[vsyscall" in ln:
            continue
        a, b = int(m.group(1), 16), int(m.group(2), 16)
        try:
            mem.seek(a)
            if tok in mem.read(min(b - a, 1 << 28)):
                hits.append((d, ln))
        except (OSError, ValueError, OverflowError):
            pass
print("hits", hits)
'''


def t_no_secret_of_serve_inside(s):
    sid = "iso-mem"
    fork(s, sid)
    # The scan is given the token reversed (so only its own process, which it skips,
    # holds the token itself).
    code = SCAN.replace('if not d.isdigit():', 'if not d.isdigit() or int(d) == os.getpid():')
    out, rc = sh(s, sid, "T=%s python3 - <<'PYEOF'\n%s\nPYEOF" % (TOKEN[::-1], code))
    eq((out.strip(), rc), ("hits []", 0), "serve's token found in a sandbox's memory")
    healthy(s, sid)


def t_host_tmp_unseen(s):
    """A sandbox's /tmp is its own (a directory of its writable layer), even where its
    template is the host's root: nothing of the host's /tmp shows through, and what
    the sandbox writes there stays in its layer."""
    mark = "/tmp/mitos-host-tmp-%d" % os.getpid()
    with open(mark, "w") as f:
        f.write("host")
    try:
        sid = "iso-tmp"
        fork(s, sid)
        out, _ = sh(s, sid, "ls -A /tmp; stat -c %%a /tmp; echo mine > /tmp/own; test -e %s && echo SEEN" % mark)
        assert "SEEN" not in out and os.path.basename(mark) not in out, out
        assert "1777" in out, out
        assert not os.path.exists("/tmp/own") or open("/tmp/own").read() != "mine\n", "the sandbox wrote the host's /tmp"
        healthy(s, sid)
    finally:
        os.unlink(mark)


def t_uptime_of_its_own(s):
    """A sandbox's uptime counts from its start, not the host's boot (a time
    namespace per boot): /proc/uptime, the start time of its processes, its
    CLOCK_MONOTONIC."""
    sid = "iso-uptime"
    t0 = time.monotonic()
    fork(s, sid)
    # start: the earliest start time of its processes (PID 1, the init, among them)
    out, code = py(s, sid, "import glob, os, time\n"
                   "up = float(open('/proc/uptime').read().split()[0])\n"
                   "start = min(int(open(p).read().rsplit(')', 1)[1].split()[19]) for p in glob.glob('/proc/[0-9]*/stat'))\n"
                   "print(up, start / os.sysconf('SC_CLK_TCK'), time.monotonic(), time.clock_gettime(time.CLOCK_BOOTTIME))")
    eq(code, 0, "read the clocks: " + out)
    up, start, mono, boot = map(float, out.split())
    lived = time.monotonic() - t0 + 1
    host_up = float(open("/proc/uptime").read().split()[0])
    assert host_up > lived + 30, "this host booted too recently to tell (%.0f s)" % host_up
    assert 0 <= up <= lived and 0 <= mono <= lived and 0 <= boot <= lived, (out, lived)
    assert 0 <= start <= up, (out, "a process started before its uptime began")
    healthy(s, sid)


def t_root_is_not_host_root(s):
    sid = "iso-root"
    fork(s, sid)
    out, _ = sh(s, sid, "id -u; head -1 /proc/self/uid_map; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status")
    lines = out.split("\n")
    eq(lines[0], "0", "root inside")
    mapping = lines[1].split()
    assert mapping[0] == "0" and int(mapping[1]) >= 65536, "root inside maps to %r outside" % mapping
    assert "NoNewPrivs:\t1" in out and "Seccomp:\t2" in out, out
    for pid in host_pids_of(s, sid)[1:]:
        uid = status_field(pid, "Uid")
        assert uid and int(uid[1]) != 0, "sandbox process %d runs as host uid %r" % (pid, uid)
    healthy(s, sid)


def t_uids_apart_from_vm_jail(s):
    """A sandbox's host uids never fall in the kvm engine's VM jail range (1912000000
    and up by default), which lies in the process engine's slot space: this id's slot
    is one of the two that meet it, so it gets another."""
    sid = "ov24201"
    fork(s, sid)
    with open(os.path.join(s.state_dir, "sandboxes", sid, "uid-base")) as f:
        base = int(f.read())
    assert not (base <= 1912000000 + 65535 and 1912000000 < base + 65536), base
    healthy(s, sid)
    s.request("DELETE", "/v1/sandboxes/" + sid)


def t_mounts_refused(s):
    sid = "iso-mount"
    fork(s, sid)
    refused(s, sid, [
        "mount -t tmpfs none /mnt",
        "mount -t proc proc /mnt",
        "mount -t sysfs sys /mnt",
        "mount -o remount,rw /sys",
        "mount -o remount,rw /proc/sys",
        "mkdir -p /tmp/cg && mount -t cgroup -o memory cg /tmp/cg",
        "mkdir -p /tmp/cg2 && mount -t cgroup2 none /tmp/cg2",
        "umount -l /run/mitos",
        "unshare -Ur true",
        "unshare -m true",
        "unshare -C true",
    ])
    healthy(s, sid)


def t_host_knobs_refused(s):
    sid = "iso-sysctl"
    fork(s, sid)
    with open("/proc/sys/kernel/core_pattern") as f:
        before = f.read()
    refused(s, sid, [
        # Writes of the current value: a kernel that allowed it changes nothing.
        "cat /proc/sys/kernel/core_pattern > /proc/sys/kernel/core_pattern",
        "cat /proc/sys/vm/overcommit_memory > /proc/sys/vm/overcommit_memory",
        "sysctl -w kernel.hostname=escaped",
        "echo h > /proc/sysrq-trigger",
        "mknod /tmp/blk b 8 0",
        "hostname escaped",
        "ip link add dummy0 type dummy",
    ])
    with open("/proc/sys/kernel/core_pattern") as f:
        eq(f.read(), before, "the host's core_pattern")
    healthy(s, sid)


def t_cgroup_escape_refused(s):
    sid = "iso-cgroup"
    fork(s, sid)
    out, _ = sh(s, sid, "ls -A /sys/fs/cgroup | wc -l")
    eq(out.strip(), "0", "no cgroup hierarchy inside")
    refused(s, sid, ["for f in /sys/fs/cgroup/*/cgroup.procs; do echo $$ > $f || exit 1; done; test -e $f"])
    with open(os.path.join(s.state_dir, "sandboxes", sid, "cgroup.json")) as f:
        dirs = json.load(f)["cgroups"]
    if dirs:
        with open(os.path.join(dirs[0], "cgroup.procs")) as f:
            members = {int(x) for x in f.read().split()}
        for pid in host_pids_of(s, sid):
            assert pid in members, "process %d left the sandbox's cgroup %s" % (pid, dirs[0])
    healthy(s, sid)


def t_kernel_log_and_keyrings_refused(s):
    sid = "iso-dmesg"
    fork(s, sid)
    refused(s, sid, ["dmesg", "head -c1 /dev/kmsg", "head -c1 /proc/kmsg"])
    out, _ = py(s, sid, r'''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(4096)
res = {}
res["syslog"] = libc.syscall(103, 3, buf, 4096)          # SYSLOG_ACTION_READ_ALL
res["add_key"] = libc.syscall(248, b"user", b"k", b"v", 1, -2)  # KEY_SPEC_PROCESS_KEYRING
res["keyctl"] = libc.syscall(250, 0, -3, 0)              # KEYCTL_GET_KEYRING_ID of the session
res["bpf"] = libc.syscall(321, 0, None, 0)
res["perf_event_open"] = libc.syscall(298, None, 0, -1, -1, 0)
print(sorted(k for k, v in res.items() if v >= 0))
''')
    eq(out.strip(), "[]", "kernel log, keyrings, bpf, perf events")
    healthy(s, sid)


def t_ptrace_and_serve_out_of_reach(s):
    sid = "iso-ptrace"
    fork(s, sid)
    out, _ = py(s, sid, r'''
import ctypes, socket, os
libc = ctypes.CDLL(None, use_errno=True)
r = libc.ptrace(16, 1, None, None)                    # PTRACE_ATTACH to the sandbox's init
print("ptrace-init", r)
try:
    open("/proc/1/mem", "rb").read(1)
    print("init-mem readable")
except OSError:
    print("init-mem closed")
c = socket.socket()
c.settimeout(3)
try:
    c.connect(("127.0.0.1", %d))
    print("serve reachable")
except OSError:
    print("serve unreachable")
print("procs", len([d for d in os.listdir("/proc") if d.isdigit()]))
''' % s.port)
    lines = out.split("\n")
    eq(lines[:3], ["ptrace-init -1", "init-mem closed", "serve unreachable"], "ptrace, /proc/1/mem, loopback")
    assert int(lines[3].split()[1]) < 20, "the sandbox sees processes of the host: %s" % lines[3]
    healthy(s, sid)


def t_fork_bomb_contained(s):
    sid = "iso-forkbomb"
    fork(s, sid)
    out, rc = py(s, sid, r'''
import os, signal, time
kids, err = [], None
for _ in range(1000):
    try:
        pid = os.fork()
    except OSError as e:
        err = e.errno
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    kids.append(pid)
for k in kids:
    os.kill(k, signal.SIGKILL)
for k in kids:
    os.waitpid(k, 0)
print(len(kids), err)
''', timeout=120)
    n, err = out.split()
    assert int(n) < PIDS_MAX and err == "11", "forked %s processes (EAGAIN expected below %d): %r" % (
        n, PIDS_MAX, out)
    healthy(s, sid)


def t_agent_socket_symlink_not_followed():
    """A sandbox replaces its agent.sock by a symlink to another sandbox's; after a
    restart of serve the symlink must not be followed (it once redirected exec)."""
    s = Server(VMM, AGENT, token=TOKEN)
    s2 = None
    try:
        s.request("POST", "/v1/templates", {"id": "iso"})
        fork(s, "iso-a")
        fork(s, "iso-b")
        sh(s, "iso-b", "echo b > /tmp/who")
        b_sock = os.path.join(s.state_dir, "sandboxes", "iso-b", "run", "agent.sock")
        # Inside A, /run/mitos is the host's STATE/sandboxes/iso-a/run.
        sh(s, "iso-a", "ln -sf %s /run/mitos/agent.sock" % b_sock)
        s.stop(signal.SIGKILL)  # a crash: the sandboxes stay, the next serve adopts them
        s2 = Server(VMM, AGENT, state_dir=s.state_dir, token=TOKEN)
        wait_until(lambda: s2.request("GET", "/v1/sandboxes/iso-b")[1].get("state") == "running", 10,
                   "iso-b re-adopted")
        out, msgs = exec_output(s2, "iso-a", {"command": "cat /tmp/who 2>/dev/null || echo a"})
        assert out != "b\n", "serve followed iso-a's symlink into iso-b"
        healthy(s2, "iso-b")
        for sid in ("iso-a", "iso-b"):
            s2.request("DELETE", "/v1/sandboxes/" + sid)
    finally:
        if s2:
            s2.cleanup()
        s.cleanup()


def t_end_recorded_init_spared(s):
    """The OOM killer prefers anything in a sandbox to its init; a sandbox whose agent
    dies ends with its cause in serve's log and in the answer to a request for it."""
    sid = "iso-end"
    fork(s, sid)
    pids = host_pids_of(s, sid)
    with open("/proc/%d/oom_score_adj" % pids[0]) as f:
        init_adj = int(f.read())
    agent = [p for p in pids if open("/proc/%d/comm" % p).read().strip() == "mitos-agent"][0]
    with open("/proc/%d/oom_score_adj" % agent) as f:
        agent_adj = int(f.read())
    assert init_adj < agent_adj, "init oom_score_adj %d, agent %d" % (init_adj, agent_adj)
    # The command's parent is the agent.
    sh(s, sid, "a=$PPID; setsid -f sh -c \"sleep 0.3; kill -9 $a\" >/dev/null 2>&1")
    wait_until(lambda: s.request("GET", "/v1/sandboxes/" + sid)[0] == 404, 10, "the sandbox ends")
    st, r = s.request("GET", "/v1/sandboxes/" + sid)
    cause = r["error"]["cause"]
    assert "ended at" in cause and "agent was killed" in cause, r
    st, r = s.unary("Mkdir", sid, {"path": "/x"})
    assert st == 404 and "agent was killed" in r["error"]["cause"], r
    wait_until(lambda: "sandbox %s exited: its agent was killed" % sid in s.stderr(), 5, "the log line")


def t_nul_refused(s):
    """A NUL in a path, command or env key is refused, never cut short."""
    sid = "iso-nul"
    fork(s, sid)
    st, r = s.unary("Mkdir", sid, {"path": "/tmp/nul\u0000tail"})
    eq((st, r.get("code"), r.get("error", {}).get("code")), (400, "invalid_argument", "invalid_input"),
       "Mkdir path with NUL (%r)" % (r,))
    for msg in ({"command": "echo cut\u0000 short"}, {"command": "true", "env": {"K\u0000X": "v"}}):
        st, ct, msgs = s.stream("ExecStream", sid, msg)
        errs = [m["error"] for f, m in msgs if "error" in m]
        assert errs and errs[0].get("mitos_code") == "invalid_input", (msg, msgs)
    st, r = s.request("POST", "/v1/set_timeout", {"sandbox": sid + "\u0000x", "timeout_seconds": 60})
    eq((st, r["error"]["code"]), (400, "invalid_input"), "REST body with NUL (%r)" % (r,))
    out, _ = sh(s, sid, "ls /tmp")
    assert "nul" not in out, "a truncated path was created: %r" % out
    # An escaped backslash before u0000 is not a NUL.
    st, r = s.unary("Mkdir", sid, {"path": "/tmp/back\\u0000slash"})
    eq(st, 200, "Mkdir of a name with a backslash (%r)" % (r,))
    healthy(s, sid)


def t_partial_write_leaves_old_file(s):
    """A streaming WriteFile whose client goes away after 3 of 10 chunks leaves the old
    file as it was, and no temporary file behind."""
    sid = "iso-write"
    fork(s, sid)
    sh(s, sid, "printf old-content > /tmp/f")
    c = socket.create_connection(("127.0.0.1", s.port))
    c.sendall(("POST /sandbox.v1.Sandbox/WriteFile HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
               "Content-Type: application/connect+json\r\nX-Sandbox-Id: %s\r\n"
               "Transfer-Encoding: chunked\r\n\r\n" % (TOKEN, sid)).encode())
    for i in range(3):
        m = {"data": base64.b64encode(b"n" * 65536).decode()}
        if i == 0:
            m["path"] = "/tmp/f"
        env = envelope(m)
        c.sendall(b"%x\r\n%s\r\n" % (len(env), env))
    time.sleep(0.5)
    c.close()
    wait_until(lambda: sh(s, sid, "ls -A /tmp | grep -c mitos-write || true")[0].strip() == "0", 5,
               "the temporary file removed")
    out, _ = sh(s, sid, "head -c 40 /tmp/f")
    eq(out, "old-content", "the old file after an unfinished write")
    healthy(s, sid)


def t_set_timeout_recorded_or_refused(s):
    """set_timeout answers 200 only once the deadline is on disk (a full disk once got
    200 and a restarted serve expired the sandbox early): here the record cannot be
    written (its temporary name is a directory)."""
    sid = "iso-timeout"
    fork(s, sid)
    record = os.path.join(s.state_dir, "sandboxes", sid, "sandbox.json")

    def recorded_deadline():
        with open(record) as f:
            return json.load(f)["deadline_ms"]
    before = recorded_deadline()
    blocker = record + ".tmp"
    os.mkdir(blocker)
    try:
        st, r = s.request("POST", "/v1/set_timeout", {"sandbox": sid, "timeout_seconds": 3600})
        eq((st, r["error"]["code"]), (500, "internal"), "set_timeout that cannot be recorded (%r)" % (r,))
    finally:
        os.rmdir(blocker)
    eq(recorded_deadline(), before, "the old deadline stands")
    st, r = s.request("POST", "/v1/set_timeout", {"sandbox": sid, "timeout_seconds": 3600})
    eq(st, 200, "set_timeout once it can be recorded (%r)" % (r,))
    eq(recorded_deadline() // 1000, r["deadline_unix"], "the recorded deadline")
    healthy(s, sid)


class HostileAgent(threading.Thread):
    """Speaks the agent protocol (agent/PROTOCOL.md) on a Unix socket, answering each
    OPEN with answer(agent, conn, stream, request): what a sandbox's root can make its
    agent say (it may ptrace it)."""
    HDR = struct.Struct(">IIBBBB")
    EVENT, END, ERROR = 4, 6, 8

    def __init__(self, path, answer):
        super().__init__(daemon=True)
        self.answer = answer
        self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.lsock.bind(path)
        self.lsock.listen(4)
        self.lsock.settimeout(30)

    def send(self, c, stream, typ, obj):
        p = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        c.sendall(self.HDR.pack(len(p), stream, typ, 0, 0, 0) + p)

    def run(self):
        try:
            c, _ = self.lsock.accept()
            buf = b""
            while True:
                while len(buf) < 12 or len(buf) < 12 + self.HDR.unpack(buf[:12])[0]:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                n, stream, typ = self.HDR.unpack(buf[:12])[:3]
                payload, buf = buf[12:12 + n], buf[12 + n:]
                if typ == 1:
                    self.send(c, 0, 1, {"version": 1, "agent": "mitos-agent", "agent_version": "0.1.0",
                                        "max_payload": 1048576, "window": 262144, "max_streams": 256})
                elif typ == 2:
                    self.answer(self, c, stream, json.loads(payload))
        except OSError:
            pass


def hostile_sandbox(answer):
    """(serve, sandbox id) with the sandbox's agent replaced by a HostileAgent: serve
    is killed, the agent's socket taken over, and a new serve re-adopts the sandbox."""
    s = Server(VMM, AGENT, token=TOKEN)
    s.request("POST", "/v1/templates", {"id": "iso"})
    fork(s, "iso-hostile")
    s.stop(signal.SIGKILL)
    sock = os.path.join(s.state_dir, "sandboxes", "iso-hostile", "run", "agent.sock")
    os.unlink(sock)
    HostileAgent(sock, answer).start()
    s2 = Server(VMM, AGENT, state_dir=s.state_dir, token=TOKEN)
    s2.own_state = True
    wait_until(lambda: s2.request("GET", "/v1/sandboxes/iso-hostile")[1].get("state") == "running", 10,
               "the sandbox re-adopted with the hostile agent")
    return s2, "iso-hostile"


def t_hostile_agent_size():
    """A sandbox's agent is the sandbox's: a ReadFile size of 1e300 once made serve send
    310 bytes of its stack to the client."""
    def answer(a, c, stream, req):
        if req.get("op") == "read":
            a.send(c, stream, a.EVENT, {"size": 1e300})
            a.send(c, stream, a.END, {"bytes": 0})
        else:
            a.send(c, stream, a.END, {"error": {"code": "unsupported", "message": "hostile"}})
    s, sid = hostile_sandbox(answer)
    try:
        st, ct, msgs = s.stream("ReadFile", sid, {"path": "/etc/hostname"})
        sizes = [m["size"] for f, m in msgs if "size" in m]
        assert all(isinstance(x, int) and 0 <= x < 1 << 53 for x in sizes), msgs
        s.request("DELETE", "/v1/sandboxes/" + sid)
    finally:
        s.cleanup()


def t_hostile_agent_frames():
    """What a sandbox's root can make its agent say must not crash, stall or swell serve
    (an adversarial run found each): a result whose data is an array (a NULL key: serve
    died; on the Mitos side a leak), 20,000 unpaired renames in one watch frame (the
    pairing was quadratic: seconds of a frozen loop), a listing past 100,000 entries (all
    held), exit codes out of range (undefined behaviour), a write that ends before the
    file (an upload that waited forever), notices with control bytes by the hundred (log
    injection, unbounded log)."""
    def answer(a, c, stream, req):
        op = req.get("op")
        if op == "run_code":
            a.send(c, stream, a.EVENT, {"type": "result", "is_main_result": True, "data": [1, "x", {}]})
            a.send(c, stream, a.END, {"status": "ok", "execution_count": 1})
        elif op == "watch":
            a.send(c, stream, a.EVENT, {"path": "/w"})
            a.send(c, stream, a.EVENT, {"events": [{"type": "rename", "name": "r", "cookie": 1}] * 20000})
            a.send(c, stream, a.END, {})
        elif op == "list":
            for _ in range(4):
                a.send(c, stream, a.EVENT, {"entries": [{"name": "n", "type": "file"}] * 30000})
            a.send(c, stream, a.END, {})
        elif op == "exec":
            for _ in range(100):
                a.send(c, 0, a.ERROR, b"x\nmitos-vmm serve: FORGED \x1b[31m" + b"E" * 200)
            a.send(c, stream, a.END, {"exited": False, "signal": 2147483647})
        else:
            a.send(c, stream, a.END, {})
    s, sid = hostile_sandbox(answer)
    try:
        key = {"X-API-KEY": TOKEN}
        st, r, data = s.request("POST", "/execute", {"code": "1"}, raw=True,
                                headers=dict(key, **{"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49999"}))
        eq(st, 200, "E2B execute with array data (%r)" % data[:200])
        st, ct, msgs = s.stream("RunCodeStream", sid, {"code": "1"})
        eq(msgs[-1], (2, {}), "Mitos run_code with array data")
        t0 = time.time()
        st, ct, msgs = s.stream("Watch", sid, {"path": "/w"})
        assert time.time() - t0 < 2, "20,000 renames took %.1f s" % (time.time() - t0)
        st, r = s.unary("List", sid, {"parent": "/"})
        assert st != 200 and "100000 entries" in json.dumps(r), (st, r)
        st, ct, msgs = s.stream("ExecStream", sid, {"command": "true"})
        codes = [m["exit"].get("exitCode", 0) for f, m in msgs if f == 0 and "exit" in m]
        eq(codes, [255], "a signal out of range reads as 128 + 127")
        st, r, data = s.request("POST", "/files?path=/tmp/x", b"y" * (5 << 20), raw=True,
                                headers=dict(key, **{"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49983",
                                                     "Content-Type": "application/octet-stream"}))
        eq(st, 502, "a write ended early (%r)" % data[:200])
        err = s.stderr()
        assert "FORGED" not in err.replace("notice: x?mitos-vmm serve: FORGED ?[31m", ""), err[-2000:]
        assert err.count("notice:") == 20 and "more notices, not logged" in err, err[-2000:]
        eq(s.request("GET", "/v1/health")[0], 200, "serve up")
        s.request("DELETE", "/v1/sandboxes/" + sid)
    finally:
        s.cleanup()


def sanitized(s):
    with open("/proc/%d/maps" % s.pid()) as f:
        return "libasan" in f.read()


def flood(s, req, seconds=3.0):
    """Sends req pipelined for `seconds` without reading a byte: (serve's RSS growth in
    KiB, bytes sent, the first bytes of the answers)."""
    rss0 = s.rss_kib()
    c = socket.create_connection(("127.0.0.1", s.port))
    c.setblocking(False)
    batch = req * 1024
    sent, deadline = 0, time.time() + seconds
    while time.time() < deadline:
        try:
            sent += c.send(batch)
        except BlockingIOError:
            select.select([], [c], [], 0.05)
    time.sleep(0.3)
    grown = s.rss_kib() - rss0
    # Still served once it reads: the first answer is there.
    c.setblocking(True)
    c.settimeout(10)
    head = c.recv(64)
    c.close()
    return grown, sent, head


def t_host_files_bounded(s):
    """What a sandbox can write that lands on the host's file system is bounded and goes
    with it: /run/mitos (the agent's socket, a host directory) is read-only inside; the
    agent's output (its root can take the agent's descriptors) stops at 4 MiB of
    agent.log; a tree deeper than PATH_MAX is removed at DELETE."""
    sid = "iso-host-files"
    fork(s, sid)
    out, _ = sh(s, sid, "touch /run/mitos/x 2>&1; mount | grep ' /run/mitos '")
    assert "Read-only file system" in out and "ro," in out and "nosuid" in out, out
    code = r'''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
agent = [p for p in os.listdir("/proc") if p.isdigit() and open("/proc/%s/comm" % p).read().strip() == "mitos-agent"][0]
fd = libc.syscall(438, os.pidfd_open(int(agent)), 1, 0)
assert fd >= 0, ctypes.get_errno()
chunk = b"x" * (1 << 20)
for _ in range(12):
    os.write(fd, chunk)
print("done")
'''
    out, rc = sh(s, sid, "python3 - <<'PYEOF'\n%s\nPYEOF" % code, timeout=60)
    eq((out.strip(), rc), ("done", 0), "the writes (%r)" % out)
    log = os.path.join(s.state_dir, "sandboxes", sid, "agent.log")
    size = os.path.getsize(log)
    assert size <= (4 << 20) + 4096, "agent.log grew to %d bytes" % size
    with open(log, "rb") as f:
        f.seek(-200, 2)
        assert b"the rest is dropped" in f.read(), "the cap is said"
    healthy(s, sid)


def t_deep_tree_removed():
    """A writable layer on the host's file system (no disk quota) holding a tree deeper
    than PATH_MAX, and a mount of it kept open by nothing: DELETE removes it all."""
    s = Server(VMM, AGENT, token=TOKEN, extra=["--sandbox-disk-mib", "0"])
    try:
        s.request("POST", "/v1/templates", {"id": "iso"})
        sid = "iso-deep"
        fork(s, sid)
        out, rc = sh(s, sid, "python3 -c \"import os\nos.chdir('/home')\nfor i in range(60):\n"
                     "    os.mkdir('d' * 200); os.chdir('d' * 200)\nopen('bottom', 'w').write('y')\n"
                     "print(len(os.getcwd()))\"", timeout=60)
        assert rc == 0 and int(out) > 4096, out
        eq(s.request("DELETE", "/v1/sandboxes/" + sid)[0], 200, "delete")
        trash = os.path.join(s.state_dir, "trash")
        wait_until(lambda: not os.listdir(trash), 10, "the trash emptied (%r)" % os.listdir(trash))
        assert "cannot remove" not in s.stderr(), s.stderr()[-2000:]
    finally:
        s.cleanup()


def t_disk_quota():
    """A sandbox that fills its disk gets ENOSPC at its quota (--sandbox-disk-mib): the
    host's file system, other sandboxes, forks and serve go on; what it deletes goes back
    to the host; its disk and loop device go with it."""
    s = Server(VMM, AGENT, token=TOKEN, extra=["--sandbox-disk-mib", "64"])
    try:
        if "NO disk quota" in "".join(s.stdout):
            raise Skip("this host gives sandboxes no disk of their own: %s" % "".join(s.stdout))
        s.request("POST", "/v1/templates", {"id": "iso"})
        fork(s, "iso-full")
        fork(s, "iso-other")
        out, rc = sh(s, "iso-full", "echo kept > /home/mark; dd if=/dev/zero of=/home/fill bs=1M count=200 2>&1; "
                     "stat -c %s /home/fill; df -k / | tail -1", timeout=120)
        assert "No space left on device" in out, out
        size = int(out.strip().split("\n")[-2])
        assert 40 << 20 < size <= 64 << 20, "filled %d bytes of a 64 MiB disk" % size
        print("     a 64 MiB disk took %d MiB before ENOSPC" % (size >> 20))
        img = os.path.join(s.state_dir, "sandboxes", "iso-full", "disk.img")
        used = os.stat(img).st_blocks * 512
        assert used <= 70 << 20, "the image takes %d bytes of the host" % used
        out, rc = sh(s, "iso-other", "dd if=/dev/zero of=/home/f bs=1M count=10 2>&1 && echo wrote")
        assert "wrote" in out, "another sandbox cannot write: %r" % out
        st, m = s.request("GET", "/sandboxes/iso-full/metrics", headers={"X-API-KEY": TOKEN})
        eq(st, 200, "E2B metrics (%r)" % (m,))
        assert 40 << 20 < m[-1]["diskTotal"] <= 64 << 20 and m[-1]["diskUsed"] >= size, m
        # A fork copies the full disk, and has the parent's quota and files.
        fork_st, r = s.request("POST", "/v1/sandboxes/iso-full/fork", {"id": "iso-child"})
        eq(fork_st, 200, "fork of the full sandbox (%r)" % (r,))
        out, rc = sh(s, "iso-child", "cat /home/mark; rm /home/fill; dd if=/dev/zero of=/home/g bs=1M count=8 "
                     "2>&1 >/dev/null && echo room")
        assert "kept" in out and "room" in out, out
        sh(s, "iso-full", "rm /home/fill; sync")
        wait_until(lambda: os.stat(img).st_blocks * 512 < 16 << 20, 10, "the deleted file's blocks given back")
        healthy(s, "iso-full")
        st, r = s.request("DELETE", "/v1/sandboxes/iso-full")
        eq(st, 200, "delete")

        def loops_on(name):
            out = []
            for d in os.listdir("/sys/block"):
                try:
                    with open("/sys/block/%s/loop/backing_file" % d) as f:
                        if name in f.read():
                            out.append(d)
                except OSError:
                    pass
            return out
        wait_until(lambda: not loops_on("iso-full"), 10, "the deleted sandbox's loop device released")
    finally:
        s.stop()
        s.cleanup()


def t_unread_answers_bounded():
    """Pipelined requests from a client that never reads: serve stops reading it once
    its answers fill the connection's output, before and after authentication (each on
    a fresh serve, so that one flood's freed memory does not hide the next)."""
    for what, req in (("tokenless", b"GET /v1/sandboxes HTTP/1.1\r\nHost: x\r\n\r\n"),
                      ("authenticated", b"GET /v1/health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                       TOKEN.encode() + b"\r\n\r\n")):
        s = Server(VMM, AGENT, token=TOKEN)
        try:
            grown, sent, head = flood(s, req)
            print("     %s: %d KiB of requests sent unread, serve's RSS +%d KiB" % (what, sent >> 10, grown))
            assert head.startswith(b"HTTP/1.1 "), head
            # (AddressSanitizer's quarantine of freed memory makes RSS say nothing.)
            if not sanitized(s):
                assert grown < 12 << 10, "serve buffered %d KiB of answers for one client (%s)" % (grown, what)
            eq(s.request("GET", "/v1/health")[0], 200, "serve healthy")
        finally:
            s.cleanup()


def t_unread_watch_bounded():
    """A file watch whose client does not read: the sandbox makes events as fast as it
    likes (no flow control reaches it), so past 4 MiB unread the watch ends with
    resource_exhausted, on the Mitos and the E2B surface, instead of serve holding them
    all (hundreds of MB in seconds before)."""
    s = Server(VMM, AGENT)
    try:
        s.request("POST", "/v1/templates", {"id": "iso"})
        sid = "iso-watch"
        fork(s, sid)
        sh(s, sid, "mkdir -p /tmp/w")
        body = json.dumps({"path": "/tmp/w", "recursive": True}).encode()
        heads = [b"POST /sandbox.v1.Sandbox/Watch HTTP/1.1\r\nHost: x\r\nContent-Type: application/connect+json"
                 b"\r\nX-Sandbox-Id: " + sid.encode(),
                 b"POST /filesystem.Filesystem/WatchDir HTTP/1.1\r\nHost: x\r\nContent-Type: "
                 b"application/connect+json\r\nE2b-Sandbox-Id: " + sid.encode() + b"\r\nE2b-Sandbox-Port: 49983"]
        watchers = []
        for head in heads:
            c = socket.socket()
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.connect(("127.0.0.1", s.port))
            env = envelope(body)
            c.sendall(head + b"\r\nContent-Length: %d\r\n\r\n" % len(env) + env)
            watchers.append(c)
        time.sleep(0.5)
        rss0 = s.rss_kib()
        py(s, sid, "import os, time\nt = time.time() + 6\nwhile time.time() < t:\n    for i in range(200):\n"
                   "        p = '/tmp/w/f%d' % i\n        open(p, 'w').close(); os.rename(p, p + 'x'); os.unlink(p + 'x')",
           timeout=60)
        grown = s.rss_kib() - rss0
        print("     serve's RSS +%d KiB with two watches unread" % grown)
        if not sanitized(s):
            assert grown < 40 << 10, "serve held %d KiB of watch events" % grown
        for c in watchers:
            c.settimeout(10)
            data = b""
            while b"resource_exhausted" not in data[-400:]:
                got = c.recv(1 << 20)
                if not got:
                    break
                data += got
            assert b"resource_exhausted" in data[-400:], data[-400:]
            c.close()
        healthy(s, sid)
    finally:
        s.cleanup()


def main():
    if os.geteuid() != 0:
        print("SKIP: the process engine needs root")
        return 77
    r = Runner()
    s = Server(VMM, AGENT, token=TOKEN)
    try:
        st, t = s.request("POST", "/v1/templates", {"id": "iso", "pids_max": PIDS_MAX})
        eq(st, 200, "template (%r)" % (t,))
        r.run_all([
            ("no_secret_of_serve_inside", t_no_secret_of_serve_inside),
            ("host_tmp_unseen", t_host_tmp_unseen),
            ("uptime_of_its_own", t_uptime_of_its_own),
            ("root_is_not_host_root", t_root_is_not_host_root),
            ("uids_apart_from_vm_jail", t_uids_apart_from_vm_jail),
            ("mounts_refused", t_mounts_refused),
            ("host_knobs_refused", t_host_knobs_refused),
            ("cgroup_escape_refused", t_cgroup_escape_refused),
            ("kernel_log_and_keyrings_refused", t_kernel_log_and_keyrings_refused),
            ("ptrace_and_serve_out_of_reach", t_ptrace_and_serve_out_of_reach),
            ("fork_bomb_contained", t_fork_bomb_contained),
            ("end_recorded_init_spared", t_end_recorded_init_spared),
            ("nul_refused", t_nul_refused),
            ("partial_write_leaves_old_file", t_partial_write_leaves_old_file),
            ("set_timeout_recorded_or_refused", t_set_timeout_recorded_or_refused),
            ("host_files_bounded", t_host_files_bounded),
        ], ONLY, s)
    finally:
        r.stop_server(s)
    r.run_all([("agent_socket_symlink_not_followed", t_agent_socket_symlink_not_followed),
               ("hostile_agent_size", t_hostile_agent_size),
               ("hostile_agent_frames", t_hostile_agent_frames),
               ("disk_quota", t_disk_quota), ("deep_tree_removed", t_deep_tree_removed),
               ("unread_answers_bounded", t_unread_answers_bounded),
               ("unread_watch_bounded", t_unread_watch_bounded)], ONLY)
    return r.finish()


if __name__ == "__main__":
    sys.exit(main())
