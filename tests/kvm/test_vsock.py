#!/usr/bin/env python3
"""KVM integration: virtio-vsock between host Unix sockets and the test guest's echo server.

usage: test_vsock.py MITOS_VMM TESTGUEST_ELF [TESTGUEST_MKDISK (unused)]

The test guest's vsock mode listens on stream port 1234 and echoes every byte back; a
packet whose payload is "MITOS-QUIT" makes it print PASS and exit 0. The host side is
Firecracker's: connect to the VM's Unix socket, write "CONNECT <port>\\n", read
"OK <host-port>\\n". Also snapshots the running VM and restores a copy, whose guest must
see a transport reset and accept new connections. Exits 77 where /dev/kvm is absent.
"""
import functools
import os
import re
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "pylib"))
import mitosvm  # noqa: E402
from mitosvm import wait_for_socket  # noqa: E402

VMM, TESTGUEST = sys.argv[1:3]
VM = functools.partial(mitosvm.VM, VMM)
PORT = 1234
TIMEOUT = 60
case = mitosvm.Cases()


def connect(path, port=PORT):
    """A host client of the VM's vsock: the socket and the device's answer line."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(TIMEOUT)
    s.connect(path)
    s.sendall(f"CONNECT {port}\n".encode())
    line = b""
    while not line.endswith(b"\n"):
        b = s.recv(1)
        if not b:
            break
        line += b
    return s, line.decode(errors="replace")


def closed_by_peer(s):
    """True when the device closes the socket without sending anything."""
    try:
        return s.recv(64) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def echo(s, data, chunk=65536):
    """Writes data while reading its echo; returns (what came back, seconds)."""
    err = []

    def writer():
        try:
            for i in range(0, len(data), chunk):
                s.sendall(data[i:i + chunk])
        except OSError as e:
            err.append(e)

    t0 = time.monotonic()
    t = threading.Thread(target=writer)
    t.start()
    got = bytearray()
    try:
        while len(got) < len(data):
            b = s.recv(1 << 20)
            if not b:
                break
            got += b
    except OSError as e:
        err.append(e)
    t.join()
    return bytes(got), time.monotonic() - t0, err


def run_cases(tmp):
    sock = os.path.join(tmp, "v.sock")
    ctl = os.path.join(tmp, "ctl.sock")
    vm = VM(["run", "--kernel", TESTGUEST, "--vsock", sock, "--control", ctl,
             "--cmdline", "testguest.mode=vsock"], ctl)
    up = vm.wait_for(r"vsock: listening on port 1234", TIMEOUT) is not None
    case("guest brings the vsock device up and listens", up and os.path.exists(sock),
         "\n".join(vm.seen))
    if not up:
        vm.p.kill()
        vm.finish()
        return

    s, line = connect(sock)
    m = re.fullmatch(r"OK (\d+)\n", line)
    case("CONNECT 1234 answers OK <port>", m is not None, repr(line))
    data = os.urandom(1 << 20)
    got, secs, err = echo(s, data)
    case("1 MiB echoed intact and in order", got == data and not err,
         f"{len(got)} bytes back, errors {err}")
    print(f"vsock echo of 1 MiB: {secs * 1000:.1f} ms, {len(data) / secs / (1 << 20):.1f} MiB/s",
          flush=True)
    s.close()
    case("guest sees the close", vm.wait_for(r"closed \(1048576 bytes echoed\)", TIMEOUT) is not None,
         "\n".join(vm.seen[-5:]))

    s, line = connect(sock)
    m2 = re.fullmatch(r"OK (\d+)\n", line)
    data = os.urandom(100000)
    got, _, err = echo(s, data, chunk=4096)
    case("a second connection after the first closed",
         m2 is not None and m is not None and m2.group(1) != m.group(1) and got == data,
         f"{line!r}, {len(got)} bytes back, {err}")
    # Half-close: everything sent comes back, then EOF (the guest shuts down too).
    s.sendall(b"tail")
    s.shutdown(socket.SHUT_WR)
    rest = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        rest += b
    case("half-close: the echo arrives, then EOF", rest == b"tail", repr(rest))
    s.close()

    # Three at once.
    conns = [connect(sock)[0] for _ in range(3)]
    blobs = [os.urandom(300000) for _ in conns]
    results = [None] * 3

    def one(i):
        results[i] = echo(conns[i], blobs[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    case("three concurrent connections echo independently",
         all(r is not None and r[0] == b for r, b in zip(results, blobs)),
         str([len(r[0]) if r else None for r in results]))
    for c in conns:
        c.close()

    s, line = connect(sock, 4321)
    case("CONNECT to a port nobody listens on: closed", line == "" and closed_by_peer(s), repr(line))
    s.close()
    for bad in (b"CONNECT abc\n", b"CONNECT 1234 5\n", b"C" * 64, b"CONNECT " + b"1" * 80):
        c = socket.socket(socket.AF_UNIX)
        c.settimeout(TIMEOUT)
        c.connect(sock)
        c.sendall(bad)
        case(f"malformed {bad[:20]!r}: closed", closed_by_peer(c))
        c.close()

    snapshot_cases(tmp, vm, sock)

    s, line = connect(sock)
    s.sendall(b"MITOS-QUIT")
    rc, err = vm.finish(TIMEOUT)
    vm.drain()
    out = "\n".join(vm.seen)
    case("MITOS-QUIT ends the guest with PASS and status 0",
         rc == 0 and "testguest: PASS" in out and "0 packet(s) dropped" in out, f"rc={rc}\n{out}\n{err}")
    case("the vsock socket is removed when the VM ends", not os.path.exists(sock))


def snapshot_cases(tmp, vm, sock):
    """A connection stays open across a snapshot of the running VM; the restored copy's
    guest hears a transport reset and serves new connections on its own socket."""
    keep, line = connect(sock)
    got, _, _ = echo(keep, b"before")
    snap = os.path.join(tmp, "snap")
    r = subprocess.run([VMM, "snapshot", "--control", vm.control, "--out", snap],
                       capture_output=True, timeout=120)
    case("snapshot of a VM with a vsock connection open", r.returncode == 0 and got == b"before",
         (r.stdout + r.stderr).decode())
    if r.returncode:
        return
    got, _, err = echo(keep, b"after the snapshot")
    case("the parent's connection survives the snapshot", got == b"after the snapshot", str(err))
    keep.close()

    csock = os.path.join(tmp, "child.sock")
    child = VM(["restore", "--snapshot", snap, "--vsock", csock])
    reset = child.wait_for(r"vsock: transport reset, cid 3, still listening", TIMEOUT) is not None
    case("the restored guest hears a transport reset", reset, "\n".join(child.seen))
    case("the restored guest forgets the snapshot's connection",
         any("closed" in x for x in child.seen), "\n".join(child.seen))
    wait_for_socket(csock)
    s, line = connect(csock)
    data = os.urandom(200000)
    got, _, err = echo(s, data)
    case("the restored guest accepts and echoes a new connection",
         line.startswith("OK ") and got == data, f"{line!r} {len(got)} {err}")
    s.sendall(b"MITOS-QUIT")
    rc, err = child.finish(TIMEOUT)
    case("the restored guest quits with 0", rc == 0, err)

    r = subprocess.run([VMM, "restore", "--snapshot", snap], capture_output=True, timeout=60)
    case("restoring a vsock snapshot without --vsock fails, naming the flag",
         r.returncode in (1, 2) and "--vsock" in r.stderr.decode(), r.stderr.decode())


def cli_cases(tmp):
    def run(args):
        return subprocess.run([VMM, "run", "--kernel", TESTGUEST] + args, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=TIMEOUT)

    p = os.path.join(tmp, "cli.sock")
    for bad in (p + ",cid=2", p + ",cid=4294967295", p + ",cid=x", p + ",port=3", ",cid=3"):
        r = run(["--vsock", bad])
        case(f"--vsock {os.path.basename(bad)}: exit 2", r.returncode == 2, r.stderr.decode())
    open(p, "w").close()
    r = run(["--vsock", p])
    case("--vsock on an existing path: exit 1 naming it",
         r.returncode == 1 and "already exists" in r.stderr.decode(), r.stderr.decode())
    r = run(["--vsock", os.path.join(tmp, "x" * 120)])
    case("--vsock with a path too long for a socket: exit 1", r.returncode == 1, r.stderr.decode())
    # The guest can be stopped from the host like any VM.
    s2 = os.path.join(tmp, "sig.sock")
    vm = VM(["run", "--kernel", TESTGUEST, "--vsock", s2 + ",cid=77",
             "--cmdline", "testguest.mode=vsock testguest.vsock_port=5000"])
    up = vm.wait_for(r"cid 77", TIMEOUT) and vm.wait_for(r"listening on port 5000", TIMEOUT)
    s, line = connect(s2, 5000) if up else (None, "")
    vm.p.terminate()
    rc, err = vm.finish(TIMEOUT)
    case("cid= and vsock_port= are honoured; SIGTERM ends the VM with 143",
         bool(up) and line.startswith("OK ") and rc == 143, f"rc={rc} {line!r}\n{err}")
    if s:
        s.close()


def main():
    return mitosvm.run_kvm_suite(case, "mitos-vsock-", run_cases, cli_cases,
                                 skip_note="; the KVM integration suite needs one")


if __name__ == "__main__":
    sys.exit(main())
