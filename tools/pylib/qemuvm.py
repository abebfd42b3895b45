"""Driving the test guest under QEMU's microvm machine (stdlib only), for
tools/bench-peers: the command line that matches `mitos-vmm run` (same guest, same RAM,
one vCPU, COM1, the debug-exit port), a QMP client that can pass file descriptors, and
the first-instruction clock.

The test guest's first instruction is `outb 0x01, 0x80` (firmware/testguest/entry.S,
both entries). mitos-vmm timestamps that exit itself; under QEMU an isa-debugcon device
on port 0x80 forwards every byte written there to a socket this module listens on, and
the arrival of the first byte is the guest's first instruction (plus one socket write
and a wake-up, tens of microseconds). QEMU's firmware writes nothing to port 0x80."""
import json
import os
import socket
import threading
import time

QEMU = "qemu-system-x86_64"


def microvm_args(guest, mem_mib, cmdline, post, serial="stdio", qmp=None):
    """post: a socket path to connect the port-0x80 console to, or None for a null
    backend. Backends may differ between a saved and a restored QEMU; devices may not."""
    args = [QEMU, "-M", "microvm", "-accel", "kvm",
            # arch-capabilities: the emulation-only KVM here rejects QEMU's write of
            # MSR 0x10a (QEMU aborts); a hardware host takes plain -cpu host as well.
            "-cpu", "host,-arch-capabilities", "-smp", "1", "-m", f"{mem_mib}M",
            "-nodefaults", "-no-user-config", "-display", "none", "-serial", serial,
            "-chardev", f"socket,id=post,path={post}" if post else "null,id=post",
            "-device", "isa-debugcon,iobase=0x80,chardev=post",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-kernel", guest, "-append", cmdline]
    if qmp:
        args += ["-qmp", f"unix:{qmp},server=on,wait=off"]
    return args


class FirstByte:
    """Listens at path for the port-0x80 console and records when its first byte
    arrives (time.monotonic_ns)."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(path)
        self.sock.listen(1)
        self.at = None
        self.done = threading.Event()
        threading.Thread(target=self._wait, daemon=True).start()

    def _wait(self):
        try:
            conn, _ = self.sock.accept()
            if conn.recv(1):
                self.at = time.monotonic_ns()
            conn.close()
        except OSError:
            pass
        self.done.set()

    def wait(self, timeout):
        self.done.wait(timeout)
        return self.at

    def close(self):
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


class QMP:
    """A QMP connection in command mode. call() skips asynchronous events."""

    def __init__(self, path, timeout=30):
        deadline = time.time() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.settimeout(timeout)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.time() > deadline:
                    raise
                time.sleep(0.002)
        self.buf = b""
        self._line()  # the greeting
        self.call("qmp_capabilities")

    def _line(self):
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise OSError("QMP connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, cmd, args=None, fds=()):
        msg = json.dumps({"execute": cmd, "arguments": args or {}}).encode() + b"\n"
        if fds:
            socket.send_fds(self.s, [msg], list(fds))
        else:
            self.s.sendall(msg)
        while True:
            r = self._line()
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise RuntimeError(f"QMP {cmd}: {r['error']}")

    def close(self):
        self.s.close()

