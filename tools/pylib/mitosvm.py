"""Driving mitos-vmm processes from Python (stdlib only): a VM whose serial console is
read line by line and typed into, and calls on a VM's JSON-lines control socket.
Used by the KVM test suites and the benchmarks."""
import json
import os
import queue
import re
import socket
import subprocess
import threading
import time


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

    def __init__(self, vmm, args, control=None, stdin=True):
        self.control = control
        self.p = subprocess.Popen([vmm] + args, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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
