#!/usr/bin/env python3
"""The kvm engine's default `python` template: `POST /v1/templates {"id": "python"}`
without a kernel or disk boots the python image's rootfs.ext4 (tools/build-image) with
the agent as init under the firmware kernel from firmware/build-kernel.sh's cache (the
pvm variant and firmware/guest-pvm.cmdline on emulation-only KVM), snapshots it, and a
sandbox forked from it runs `python3 -c 'print(6*7)'` without reading its disk (the
template warmed python3 into the page cache before its snapshot), and that run_code's
kernel is already running there (started by the warm-up too). Also: the engine_unavailable
errors when the image or the kernel is not built. Stdlib only.

usage: test_kvm_python.py MITOS_VMM MITOS_AGENT [TEST-NAME-SUBSTRING...]
Exits 77 without /dev/kvm or root. The boot test is skipped when the image or the kernel
is not built (it never builds them: that takes minutes)."""
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "pylib"))
import budget  # noqa: E402
from mitos_test import Runner, Server, Skip, eq, exec_output  # noqa: E402

VMM, AGENT = sys.argv[1], sys.argv[2]
ONLY = sys.argv[3:]


def cache_dir():
    return os.environ.get("MITOS_CACHE") or os.path.join(os.environ["HOME"], ".cache", "mitos")


def emulated():
    return budget.emulated(VMM)


def kernel_path():
    return os.path.join(cache_dir(), "kernel", "current-pvm" if emulated() else "current", "vmlinux")


def kvm_server(cache, env=None):
    return Server(VMM, AGENT, extra=["--engine", "kvm", "--kvm-pool", "1", "--images", os.path.join(cache, "images")],
                  env=env)


def t_unavailable_errors():
    """Without the image, then without the kernel: 503 engine_unavailable saying what
    to build."""
    tmp = tempfile.mkdtemp(prefix="mitos-kvm-cache-", dir="/var/tmp")
    try:
        env = dict(os.environ, MITOS_CACHE=tmp)
        s = kvm_server(tmp, env)
        try:
            if "no python image in" not in "".join(s.stdout):
                raise AssertionError("no start-up line about the missing image: %r" % s.stdout)
            st, r = s.request("POST", "/v1/templates", {"id": "python"})
            eq((st, r["error"]["code"]), (503, "engine_unavailable"), "no image: %r" % r)
            if "tools/build-image" not in r["error"]["message"]:
                raise AssertionError("the error does not say how to build the image: %r" % r)
            st, r = s.request("POST", "/v1/templates", {"id": "other"})
            eq((st, r["error"]["code"]), (503, "engine_unavailable"), "any id is made from the image: %r" % r)
        finally:
            eq(s.stop(), 0, "serve's exit")
            s.cleanup()
        # An image (a stand-in ext4) but no kernel in the cache.
        img = os.path.join(tmp, "images", "k1")
        os.makedirs(img)
        with open(os.path.join(img, "rootfs.ext4"), "wb") as f:
            f.truncate(1 << 20)
        os.symlink("k1", os.path.join(tmp, "images", "current-python"))
        s = kvm_server(tmp, env)
        try:
            st, r = s.request("POST", "/v1/templates", {"id": "python"})
            eq((st, r["error"]["code"]), (503, "engine_unavailable"), "no kernel: %r" % r)
            msg = r["error"]["message"]
            if "firmware/build-kernel.sh" not in msg or os.path.join(tmp, "kernel") not in msg:
                raise AssertionError("the error does not name the kernel and its build: %r" % r)
            if emulated() and "--variant pvm" not in msg:
                raise AssertionError("the error does not name the pvm variant: %r" % r)
            st, r = s.request("GET", "/v1/templates")
            eq(r, [], "nothing left of the failed templates")
        finally:
            eq(s.stop(), 0, "serve's exit")
            s.cleanup()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def t_python_template_exec():
    disk = os.path.join(cache_dir(), "images", "current-python", "rootfs.ext4")
    kernel = kernel_path()
    for path, build in ((disk, "tools/build-image"),
                        (kernel, "firmware/build-kernel.sh" + (" --variant pvm" if emulated() else ""))):
        if not os.path.exists(path):
            raise Skip("%s is not built (%s builds it)" % (path, build))
    s = kvm_server(cache_dir())
    try:
        t0 = time.time()
        # Boot, warm-up and snapshot: minutes where KVM only emulates guest kernel code.
        c = s.conn(timeout=budget.seconds(VMM, 10, budget.TEMPLATE_MINSTR))
        c.request("POST", "/v1/templates", body=json.dumps({"id": "python"}), headers={"Content-Type": "application/json"})
        resp = c.getresponse()
        st, r = resp.status, json.loads(resp.read())
        c.close()
        if st != 200:
            raise AssertionError("template: %s %r\n%s" % (st, r, s.stderr()[-3000:]))
        t_tpl = time.time() - t0
        with open(os.path.join(s.state_dir, "templates", "python.json")) as f:
            rec = json.load(f)
        eq(rec["spec"], {"image": "python"}, "the request kept as the spec")
        with open(os.path.join(rec["root"], "kvm.json")) as f:
            kvm = json.load(f)
        eq((kvm["kernel"], kvm["rootfs"]), (os.path.realpath(kernel), os.path.realpath(disk)), "kernel and disk")
        for arg in ("root=/dev/vda", " ro", "init=/usr/sbin/init"):
            if arg not in kvm["cmdline"]:
                raise AssertionError("%r not in the command line %r" % (arg, kvm["cmdline"]))
        if "rdinit=" in kvm["cmdline"]:
            raise AssertionError("an initramfs option in a disk guest's command line: %r" % kvm["cmdline"])
        t0 = time.time()
        st, r = s.request("POST", "/v1/fork", {"template": "python", "id": "py1"})
        eq(st, 200, "fork (%r)" % (r,))
        t_fork = time.time() - t0
        # The template ran python3 before its snapshot (kvm_guest.h's warm-up): the
        # child's first python3 finds it in the inherited page cache, so its root disk
        # reads nothing for it (sectors read: the third field of the disk's stat, read
        # with the shell's builtin so that only python3 counts).
        t0 = time.time()
        cmd = ("read -r a < /sys/block/vda/stat; python3 -c 'print(6*7)'; read -r b < /sys/block/vda/stat; "
               "echo \"$a\"; echo \"$b\"")
        first = budget.seconds(VMM, 5, budget.FIRST_PYTHON_MINSTR)
        out, msgs = exec_output(s, "py1", {"command": cmd, "timeoutSeconds": int(first)}, timeout=first + 30)
        t_exec = time.time() - t0
        lines = out.splitlines()
        eq(lines[:1], ["42"], "python3 in the guest (%r)" % msgs)
        read = int(lines[2].split()[2]) - int(lines[1].split()[2])
        print("     template %.1f s (boot, agent, warm-up, snapshot), sandbox %.2f s, first python3 -c %.1f s "
              "reading %d sectors" % (t_tpl, t_fork, t_exec, read))
        eq(read, 0, "sectors the child's first python3 read from disk")
        # The template also started run_code's IPython kernel (an empty cell) before its
        # snapshot: the child has it running before its first run_code, which then does
        # not wait for IPython to start.
        out, msgs = exec_output(s, "py1", {"command": "grep -l 'mitos_kerne[l]' /proc/[0-9]*/cmdline | wc -l"},
                                timeout=60)
        eq(out.strip() not in ("", "0"), True, "a Python kernel runs before the first run_code (%r)" % (out,))
        t0 = time.time()
        code = {"code": "6 * 7", "language": "python", "timeoutSeconds": 120}
        st, _, msgs = s.stream("RunCodeStream", "py1", code, timeout=150)
        res = [m["result"]["text"] for f, m in msgs if f == 0 and "result" in m]
        eq(res, ["42"], "the first run_code (%r)" % (msgs,))
        print("     first run_code %.2f s" % (time.time() - t0))
        # The contract's default cwd, which the image has.
        out, msgs = exec_output(s, "py1", {"command": "pwd"}, timeout=60)
        eq(out, "/workspace\n", "exec's default cwd (%r)" % msgs)
        st, _ = s.request("DELETE", "/v1/sandboxes/py1")
        eq(st, 200, "delete")
    finally:
        eq(s.stop(), 0, "serve's exit")
        s.cleanup()


def main():
    r = Runner()
    if os.geteuid() != 0:
        print("SKIP: serve's kvm engine jails its VMs with namespaces: run as root")
        return 77
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError as e:
        print("SKIP: no usable /dev/kvm (%s)" % e.strerror)
        return 77
    r.run_all([("unavailable_errors", t_unavailable_errors), ("python_template_exec", t_python_template_exec)],
              ONLY)
    return r.finish()


if __name__ == "__main__":
    sys.exit(main())
