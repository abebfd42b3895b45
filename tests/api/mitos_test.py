"""Helpers for the API end-to-end tests: start a real `mitos-vmm serve` on an
ephemeral port with a temporary state dir, and talk to it with raw sockets and
http.client (stdlib only)."""
import base64
import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback


class Server:
    def __init__(self, vmm, agent, extra=(), state_dir=None, token=None, env=None):
        self.vmm, self.agent = vmm, agent
        self.own_state = state_dir is None
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="mitos-api-test-", dir="/var/tmp")
        self.token = token
        self.token_file = None
        args = [vmm, "serve", "--listen", "127.0.0.1:0", "--state-dir", self.state_dir,
                "--agent", agent] + list(extra)
        # Tests choose their template root; a built image must not change them.
        if "--images" not in extra:
            args += ["--images", "none"]
        # And their engine: serve's default is kvm wherever /dev/kvm works.
        if "--engine" not in extra:
            args += ["--engine", "process"]
        if token:
            fd, self.token_file = tempfile.mkstemp(prefix="mitos-token-", dir="/var/tmp")
            os.write(fd, (token + "\n").encode())
            os.close(fd)
            args += ["--token-file", self.token_file]
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log,
                                     env=env or os.environ.copy())
        self.port = None
        self.stdout = []
        deadline = time.time() + 30
        while time.time() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            self.stdout.append(line)
            m = re.match(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if not self.port:
            self.proc.kill()
            raise RuntimeError("serve did not start: %s %s" % ("".join(self.stdout), self.stderr()))

    def stderr(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def conn(self, timeout=30):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def headers(self, extra=None):
        h = {}
        if self.token:
            h["Authorization"] = "Bearer " + self.token
        if extra:
            h.update(extra)
        return h

    def request(self, method, path, body=None, headers=None, raw=False):
        c = self.conn()
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        c.request(method, path, body=body, headers=self.headers(headers))
        r = c.getresponse()
        data = r.read()
        c.close()
        if raw:
            return r.status, r, data
        try:
            return r.status, json.loads(data) if data else None
        except ValueError:
            return r.status, data

    def unary(self, method, sid, msg):
        return self.request("POST", "/sandbox.v1.Sandbox/" + method, body=json.dumps(msg),
                            headers={"Content-Type": "application/json", "X-Sandbox-Id": sid})

    def stream(self, method, sid, msg, headers=None, timeout=60):
        c = self.conn(timeout)
        h = {"Content-Type": "application/connect+json", "X-Sandbox-Id": sid,
             "Connect-Protocol-Version": "1"}
        if headers:
            h.update(headers)
        c.request("POST", "/sandbox.v1.Sandbox/" + method, body=envelope(msg),
                  headers=self.headers(h))
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, r.getheader("Content-Type"), parse_envelopes(data)

    def pid(self):
        return self.proc.pid

    def io_workers(self):
        """serve's io-wq threads: none, as every descriptor its ring reads is polled. A
        blocking one parks a thread per read, and on Linux 6.1 its read is cancelled
        when the thread cannot be made (while a SIGCHLD is pending)."""
        task = "/proc/%d/task" % self.proc.pid
        names = []
        for t in os.listdir(task):
            try:
                with open(os.path.join(task, t, "comm")) as f:
                    names.append(f.read().strip())
            except OSError:
                pass
        return [n for n in names if n.startswith("iou-wrk")]

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def cleanup(self):
        self.stop()
        if self.token_file:
            os.unlink(self.token_file)
        if self.own_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)


def envelope(obj, flags=0):
    b = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return struct.pack(">BI", flags, len(b)) + b


def parse_envelopes(data):
    out, i = [], 0
    while i + 5 <= len(data):
        flags, n = struct.unpack(">BI", data[i:i + 5])
        out.append((flags, json.loads(data[i + 5:i + 5 + n])))
        i += 5 + n
    if i != len(data):
        raise AssertionError("trailing bytes after envelopes: %r" % data[i:i + 40])
    return out


def raw_exchange(port, payload, timeout=10, shut=False, read=True):
    """Sends bytes, returns everything the server sends until it closes or times out."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(payload)
    if shut:
        s.shutdown(socket.SHUT_WR)
    data = b""
    if read:
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
    s.close()
    return data


def fork_one(s, sid, timeout=600):
    """Sandbox sid forked from the python template (made first when missing), with a
    TTL of timeout seconds."""
    s.request("POST", "/v1/templates", {"id": "python"})
    st, r = s.request("POST", "/v1/fork", {"template": "python", "id": sid})
    eq(st, 200, "fork (%r)" % (r,))
    st, r = s.request("POST", "/v1/set_timeout", {"sandbox": sid, "timeout_seconds": timeout})
    eq(st, 200, "set_timeout (%r)" % (r,))


def client_stream(s, sid, method, open_msg, key, data, chunks=1):
    """A client-streaming call as the contract sends it: {open: open_msg}, then the bytes as
    {key: base64} messages. Returns the status and the answer's envelopes."""
    step = max(1, (len(data) + chunks - 1) // chunks)
    body = envelope({"open": open_msg})
    for i in range(0, len(data), step):
        body += envelope({key: base64.b64encode(data[i:i + step]).decode()})
    c = s.conn()
    c.request("POST", "/sandbox.v1.Sandbox/" + method, body=body,
              headers=s.headers({"Content-Type": "application/connect+json", "X-Sandbox-Id": sid}))
    r = c.getresponse()
    msgs = parse_envelopes(r.read())
    c.close()
    return r.status, msgs


def write_file(s, sid, path, data, chunks=1, mode=None):
    """WriteFile: {open: {path, mode}}, then {data} messages."""
    op = {"path": path}
    if mode is not None:
        op["mode"] = mode
    return client_stream(s, sid, "WriteFile", op, "data", data, chunks)


def exit_of(msgs):
    """The ExecExit of an ExecStream answer (exitCode 0 is omitted on the wire), or None."""
    ends = [m["exit"] for f, m in msgs if f == 0 and "exit" in m]
    return dict(ends[0], exitCode=ends[0].get("exitCode", 0)) if ends else None


def wait_running(s, sid, timeout=10):
    """Until sandbox sid answers an exec (after a restart re-adopts it, say)."""
    wait_until(lambda: s.stream("ExecStream", sid, {"command": "true"})[2][-1] == (2, {}), timeout,
               "%s running" % sid)


def exec_output(s, sid, msg, timeout=30):
    """ExecStream of msg: what the command wrote on stdout (text) and the envelopes."""
    c = s.conn(timeout)
    c.request("POST", "/sandbox.v1.Sandbox/ExecStream", body=envelope(msg),
              headers=s.headers({"Content-Type": "application/connect+json", "X-Sandbox-Id": sid}))
    msgs = parse_envelopes(c.getresponse().read())
    c.close()
    return b"".join(base64.b64decode(m["stdout"]) for f, m in msgs if "stdout" in m).decode(), msgs


def cgroup_dirs(pid, parent):
    """The v1 memory/cpu or v2 cgroup directories of pid, when under serve's parent cgroup
    (mitos-vms, mitos-sandboxes): {"memory": ..., "cpu": ..., "pids": ...} or {"v2": ...}."""
    dirs = {}
    with open("/proc/%d/cgroup" % pid) as f:
        for line in f:
            hid, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(",") if ctrls else ["unified"]:
                if c in ("memory", "cpu", "pids") and parent in path:
                    dirs[c] = "/sys/fs/cgroup/%s%s" % (c, path)
                elif c == "unified" and parent in path:
                    for mnt in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
                        if os.path.exists(mnt + path + "/memory.max"):
                            dirs["v2"] = mnt + path
    return dirs


def status_of(raw):
    m = re.match(rb"HTTP/1\.1 (\d{3})", raw)
    return int(m.group(1)) if m else None


def body_of(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    return json.loads(body) if body else None


def server_sandbox_pids(state_dir):
    """PIDs of the sandbox inits one serve's registry records: other suites run their
    own servers and sandboxes at the same time, so a host-wide scan would see theirs."""
    pids = []
    root = os.path.join(state_dir, "sandboxes")
    for sid in os.listdir(root) if os.path.isdir(root) else []:
        try:
            with open(os.path.join(root, sid, "sandbox.json")) as f:
                pids.append(int(json.load(f)["pid"]))
        except (OSError, ValueError, KeyError):
            pass
    return pids


class Runner:
    def __init__(self):
        self.passed = self.failed = self.skipped = 0

    def run(self, name, fn, *args):
        t0 = time.time()
        try:
            fn(*args)
        except Skip as e:
            self.skipped += 1
            print("SKIP %s: %s" % (name, e), flush=True)
            return
        except Exception:
            self.failed += 1
            print("FAIL %s (%.2fs)" % (name, time.time() - t0), flush=True)
            traceback.print_exc()
            return
        self.passed += 1
        print("ok   %s (%.2fs)" % (name, time.time() - t0), flush=True)

    def run_all(self, tests, only, *args):
        """Runs the (name, fn) tests whose name contains a word of only (all without any)."""
        for name, fn in tests:
            if not only or any(o in name for o in only):
                self.run(name, fn, *args)

    def stop_server(self, s):
        """Stops and removes s: a serve that does not exit 0 fails the suite."""
        rc = s.stop()
        log = s.stderr()
        s.cleanup()
        if rc != 0:
            print("serve exited with %r\n%s" % (rc, log))
            self.failed += 1

    def finish(self):
        print("%d passed, %d failed, %d skipped" % (self.passed, self.failed, self.skipped), flush=True)
        return 1 if self.failed else 0


class Skip(Exception):
    pass


def eq(a, b, what=""):
    if a != b:
        raise AssertionError("%s: expected %r, got %r" % (what, b, a))


def wait_until(pred, timeout=10, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)
