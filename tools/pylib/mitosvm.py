"""Driving mitos-vmm processes from Python (stdlib only): a VM whose serial console is
read line by line and typed into, and calls on a VM's JSON-lines control socket.
Used by the KVM test suites and the benchmarks."""
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time


class Cases:
    """A suite's checks, each printed as it is decided (flushed: the VMs' output
    interleaves): "ok   <name>", or "FAIL <name>" and what explains it."""

    def __init__(self):
        self.passed, self.failures = 0, []

    def __call__(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"ok   {name}", flush=True)
        else:
            self.failures.append(name)
            print(f"FAIL {name}\n{detail}", flush=True)

    def finish(self):
        """Prints the counts; returns the suite's exit status."""
        print(f"{self.passed} passed, {len(self.failures)} failed")
        return 1 if self.failures else 0


def kvm_usable(skip_note=""):
    """Whether /dev/kvm (or $MITOS_KVM_DEVICE) opens; if not, says SKIP and why."""
    try:
        os.close(os.open(os.environ.get("MITOS_KVM_DEVICE", "/dev/kvm"), os.O_RDWR))
        return True
    except OSError as e:
        print(f"SKIP: no usable /dev/kvm ({e.strerror}){skip_note}")
        return False


def run_kvm_suite(cases, tmp_prefix, *bodies, skip_note=""):
    """main() of a suite of VMs: 77 (skipped) without a usable /dev/kvm; else each
    body(tmp) in one temporary directory, removed afterwards, then the counts; 1 when a
    case failed."""
    if not kvm_usable(skip_note):
        return 77
    tmp = tempfile.mkdtemp(prefix=tmp_prefix)
    try:
        for body in bodies:
            body(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cases.finish()


def control_call(path, request, timeout=60):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    s.sendall((json.dumps(request) + "\n").encode())
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return json.loads(buf)


def wait_for_socket(path, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.002)
    return False


class VM:
    """A mitos-vmm process (run, restore or vm) with its console on pipes."""

    def __init__(self, vmm, args, control=None, stdin=True, pass_fds=()):
        self.control = control
        self.p = subprocess.Popen([vmm] + args, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=pass_fds)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.p.stdout:
            self.lines.put(raw.decode(errors="replace").rstrip("\r\n"))
        self.lines.put(None)

    def wait_for(self, pattern, timeout=60):
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            m = rx.search(line)
            if m:
                return m
        return None

    def drain(self):
        """Moves every line printed so far into self.seen."""
        while not self.lines.empty():
            line = self.lines.get()
            if line is not None:
                self.seen.append(line)

    def tail(self, n, timeout=5):
        """The last n console lines, once the process has closed its console (or after
        timeout seconds): for a report on a VM that ended."""
        self.wait_for(r"(?!)", timeout)   # a pattern that never matches: read to the end
        return self.seen[-n:]

    def send(self, text):
        self.p.stdin.write(text.encode())
        self.p.stdin.flush()

    def call(self, request, timeout=60):
        return control_call(self.control, request, timeout)

    def finish(self, timeout=60):
        if self.p.stdin:
            try:
                self.p.stdin.close()
            except OSError:
                pass
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
        return rc, self.p.stderr.read().decode(errors="replace")
