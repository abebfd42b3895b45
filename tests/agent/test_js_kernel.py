#!/usr/bin/env python3
"""agent/mitos_kernel.js on its own, where the agent cannot show it: when the agent
goes (it closes the kernel's pipes) with a cell still waiting and a timer still
printing, the kernel exits; it neither waits for the cell nor spins on the broken
pipes (it did, at 100% CPU, until the sandbox ended).

usage: test_js_kernel.py KERNEL_JS"""
import json
import os
import shutil
import struct
import subprocess
import sys
import time

KERNEL = sys.argv[1]


def main():
    node = shutil.which("node")
    if not node:
        print("SKIP: no node")
        return 77
    devnull = os.open(os.devnull, os.O_RDONLY)
    pipes = [os.pipe() for _ in range(4)]  # requests, stdout, stderr, events
    req, out, err, ev = pipes
    child_fds = [devnull, out[1], err[1], ev[1], req[0]]

    def plumb():
        for i, fd in enumerate(child_fds):
            os.dup2(fd, 100 + i)
        for i in range(len(child_fds)):
            os.dup2(100 + i, i)

    p = subprocess.Popen([node, KERNEL], preexec_fn=plumb, close_fds=False)
    for fd in child_fds:
        os.close(fd)
    cell = json.dumps({"id": 1, "generation": 0,
                       "code": "setInterval(() => console.log('tick'), 5); await new Promise(() => {})"}).encode()
    os.write(req[1], struct.pack(">I", len(cell)) + cell)
    time.sleep(0.5)
    for fd in (req[1], out[0], err[0], ev[0]):
        os.close(fd)
    t0 = time.monotonic()
    while p.poll() is None and time.monotonic() - t0 < 5:
        time.sleep(0.05)
    if p.poll() is None:
        cpu = int(open("/proc/%d/stat" % p.pid).read().rsplit(")", 1)[1].split()[11]) / os.sysconf("SC_CLK_TCK")
        p.kill()
        print("FAIL: the kernel outlived its agent by 5 s (%.1f s of CPU)" % cpu)
        return 1
    print("ok: the kernel exited %.2f s after its agent went (status %d)" % (time.monotonic() - t0, p.returncode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
