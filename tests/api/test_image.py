#!/usr/bin/env python3
"""Template images and serve: which root the python template gets (--images DIR,
the default image directory, 'none'), the errors that say to run
tools/build-image, and, when tools/build-image has built the python image on this
host, a sandbox on it: Debian bookworm with IPython, matplotlib and numpy, and
none of the host's files.

usage: test_image.py MITOS_VMM MITOS_AGENT [TEST-NAME-SUBSTRING...]"""
import base64
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mitos_test import Runner, Server, Skip, envelope, eq, parse_envelopes  # noqa: E402

VMM, AGENT = sys.argv[1], sys.argv[2]
ONLY = sys.argv[3:]


def images_dir():
    cache = os.environ.get("MITOS_CACHE") or os.path.join(os.environ.get("HOME", "/root"), ".cache/mitos")
    return os.path.join(cache, "images")


def dynamic(path):
    out = subprocess.run(["readelf", "-lW", path], capture_output=True, text=True).stdout
    return "Requesting program interpreter" in out


def start_fails(args, env=None):
    state = tempfile.mkdtemp(prefix="mitos-img-test-", dir="/var/tmp")
    try:
        argv = [VMM, "serve", "--engine", "process", "--listen", "127.0.0.1:0", "--state-dir", state] + args
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
        return p.returncode, p.stdout + p.stderr
    finally:
        shutil.rmtree(state, ignore_errors=True)


def fake_image(d):
    root = os.path.join(d, "k1", "rootfs")
    os.makedirs(os.path.join(root, "usr", "bin"))
    os.symlink("python3.11", os.path.join(root, "usr", "bin", "python3"))
    os.symlink("k1", os.path.join(d, "current-python"))
    return root


def template_root(s):
    st, r = s.request("POST", "/v1/templates", {"id": "python"})
    eq(st, 200, "template (%r)" % (r,))
    # Where it lives is the registry's business, not the contract's answer.
    with open(os.path.join(s.state_dir, "templates", "python.json")) as f:
        return json.load(f)["root"]


def t_explicit_dir_without_image(vmm, agent):
    d = tempfile.mkdtemp(prefix="mitos-images-", dir="/var/tmp")
    try:
        rc, out = start_fails(["--agent", agent, "--images", d])
        eq(rc, 1, "exit status (%s)" % out)
        assert "no python image in " + d in out and "tools/build-image" in out, out
    finally:
        shutil.rmtree(d)


def t_default_dir_falls_back(vmm, agent):
    cache = tempfile.mkdtemp(prefix="mitos-cache-", dir="/var/tmp")
    env = dict(os.environ, MITOS_CACHE=cache)
    try:
        # Server() pins --images none; this starts serve without the flag.
        state = tempfile.mkdtemp(prefix="mitos-img-test-", dir="/var/tmp")
        p = subprocess.Popen([vmm, "serve", "--engine", "process", "--listen", "127.0.0.1:0", "--state-dir", state,
                              "--agent", agent],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        lines = []
        for line in p.stdout:
            lines.append(line)
            if line.startswith("listening on"):
                break
        p.terminate()
        p.wait(30)
        shutil.rmtree(state, ignore_errors=True)
        out = "".join(lines)
        assert "listening on" in out, out + p.stderr.read()
        assert "WARNING: no python image in %s/images" % cache in out and "tools/build-image" in out, out
    finally:
        shutil.rmtree(cache)


def t_fake_image_root(vmm, agent):
    d = tempfile.mkdtemp(prefix="mitos-images-", dir="/var/tmp")
    try:
        root = fake_image(d)
        if dynamic(agent):
            rc, out = start_fails(["--agent", agent, "--images", d])
            eq(rc, 1, "exit status with a dynamic agent (%s)" % out)
            assert "dynamically linked" in out, out
            return
        s = Server(vmm, agent, extra=["--images", d])
        try:
            eq(template_root(s), os.path.realpath(root), "template root")
            assert "template image: python = " + os.path.realpath(root) in "".join(s.stdout), s.stdout
        finally:
            s.cleanup()
    finally:
        shutil.rmtree(d)


def t_images_none(vmm, agent):
    s = Server(vmm, agent, extra=["--images", "none"])
    try:
        eq(template_root(s), "/", "template root with --images none")
    finally:
        s.cleanup()


def exec_out(s, sid, cmd):
    c = s.conn(120)
    c.request("POST", "/sandbox.v1.Sandbox/ExecStream", body=envelope({"command": cmd, "timeoutSeconds": 120}),
              headers={"Content-Type": "application/connect+json", "X-Sandbox-Id": sid})
    msgs = parse_envelopes(c.getresponse().read())
    c.close()
    end = [dict(m["exit"], exitCode=m["exit"].get("exitCode", 0)) for f, m in msgs if "exit" in m]
    out = b"".join(base64.b64decode(m["stdout"]) for f, m in msgs if "stdout" in m).decode()
    err = b"".join(base64.b64decode(m["stderr"]) for f, m in msgs if "stderr" in m).decode()
    return end[0]["exitCode"] if end else None, out, err


def image_server(vmm, agent):
    """serve on the built python image (Skip without one) and a sandbox img-1 of it."""
    d = images_dir()
    root = os.path.join(d, "current-python", "rootfs")
    if not os.path.isdir(root):
        raise Skip("no python image in %s (tools/build-image builds it)" % d)
    # A sanitizer build's agent is dynamic and cannot run in the image; the image
    # carries its own static agent.
    # serve execs the host-side mitos-sandbox-init found next to the agent: the build's.
    if dynamic(agent):
        pair = tempfile.mkdtemp(prefix="mitos-image-agent-")
        os.symlink(os.path.join(root, "usr/local/bin/mitos-agent"), os.path.join(pair, "mitos-agent"))
        os.symlink(os.path.join(os.path.dirname(os.path.abspath(agent)), "mitos-sandbox-init"),
                   os.path.join(pair, "mitos-sandbox-init"))
        agent = os.path.join(pair, "mitos-agent")
    s = Server(vmm, agent, extra=["--images", d])
    try:
        eq(template_root(s), os.path.realpath(root), "template root")
        st, r = s.request("POST", "/v1/fork", {"template": "python", "id": "img-1"})
        eq(st, 200, "fork (%r)" % (r,))
    except BaseException:
        s.cleanup()
        raise
    return s


def t_real_image(vmm, agent):
    s = image_server(vmm, agent)
    try:
        rc, out, err = exec_out(s, "img-1", "grep VERSION_CODENAME /etc/os-release; "
                                "python3 -c 'import IPython, matplotlib, numpy; print(\"imports ok\")'; "
                                "test -e /work || echo no-host-files; test -d /workspace && echo workspace; "
                                "getent passwd user | cut -d: -f1,3,6; "
                                "node -e \"for (const m of ['acorn', 'acorn-walk', 'typescript']) "
                                "require('/usr/share/nodejs/' + m); console.log('node', process.version.split('.')[0])\"")
        eq(rc, 0, "exec (%s)" % err)
        eq(out.split("\n")[:6], ["VERSION_CODENAME=bookworm", "imports ok", "no-host-files", "workspace",
                                 "user:1000:/home/user", "node v18"], "inside the image")
        c = s.conn(120)
        code = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('image test')\n"
        c.request("POST", "/sandbox.v1.Sandbox/RunCodeStream", body=envelope({"code": code}),
                  headers={"Content-Type": "application/connect+json", "X-Sandbox-Id": "img-1"})
        msgs = parse_envelopes(c.getresponse().read())
        c.close()
        pngs = [m["result"]["data"]["image/png"] for f, m in msgs if "result" in m
                and "image/png" in m["result"]["data"]]
        eq(len(pngs), 1, "one figure (%r)" % ([m for f, m in msgs if "result" not in m],))
        # The kernel's base64 text, base64-encoded once more as protojson bytes.
        assert base64.b64decode(base64.b64decode(pngs[0])).startswith(b"\x89PNG\r\n"), "a PNG"
    finally:
        s.cleanup()


def t_image_sudo(vmm, agent):
    """The image's user has sudo, as on E2B: under the process engine no_new_privs voids
    the setuid sudo, so the agent runs the command (agent/sudo.h), for a caller
    sudoers gives NOPASSWD: ALL and no one else; the command is the caller's: its
    stdin, output, exit status, and its end when the caller is killed."""
    s = image_server(vmm, agent)
    as_user = "cd /tmp && su user -c %s"
    try:
        for cmd, want in [("sudo id -un", (0, "root\n")), ("sudo -u user id -un", (0, "user\n")),
                          ("echo in | sudo cat", (0, "in\n")), ("sudo sh -c 'exit 7'", (7, "")),
                          ("sudo sh -c 'echo $HOME $SUDO_USER; pwd'", (0, "/root user\n/tmp\n")),
                          ("FOO=1 sudo sh -c 'echo [$FOO]'; FOO=1 sudo -E sh -c 'echo [$FOO]'", (0, "[]\n[1]\n")),
                          ("sudo -i pwd", (0, "/root\n"))]:
            rc, out, err = exec_out(s, "img-1", as_user % shlex.quote(cmd))
            eq((rc, out), want, "%s (%s)" % (cmd, err))
        rc, out, err = exec_out(s, "img-1", as_user % shlex.quote("sudo no-such-command"))
        eq((rc, err), (1, "sudo: no-such-command: command not found\n"), "a missing command")
        rc, out, err = exec_out(s, "img-1", "useradd bob && su bob -c 'sudo id' 2>&1")
        eq(rc, 1, "bob is no sudoer (%s)" % out)
        assert "bob is not in the sudoers file" in out, out
        # Anyone may talk to the socket: what is not a request is answered or dropped,
        # idle connections are capped and closed, and sudo still works after.
        probe = ("import socket, array, os\n"
                 "def conn():\n"
                 "    c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); c.connect('/run/mitos/sudo.sock'); return c\n"
                 "import time\n"
                 "idle = [conn() for _ in range(100)]\n"
                 "time.sleep(0.5)\n"
                 "def closed(c):\n"
                 "    try: return c.recv(1, socket.MSG_DONTWAIT) == b''\n"
                 "    except BlockingIOError: return False\n"
                 "print(sum(map(closed, idle)))\n"
                 "time.sleep(5.5)\n"
                 "print(sum(map(closed, idle)))\n"
                 "c = conn(); c.send(b'garbage'); print(c.recv(600))\n"
                 "c = conn(); c.send(b'MITOS-SUDO 1\\0arg=id\\0'); print(c.recv(600))\n"
                 "c = conn(); fds = array.array('i', [0, 1, 2])\n"
                 "c.sendmsg([b'MITOS-SUDO 1\\0shell=bogus\\0'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]); print(c.recv(600))\n"
                 "c = conn(); c.sendmsg([b'x' * 200000], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]); print(c.recv(600))\n")
        rc, out, err = exec_out(s, "img-1", as_user % shlex.quote("python3 -c %s; sudo id -un" % shlex.quote(probe)))
        eq(rc, 0, "hostile requests (%s)" % err)
        assert not err, err
        lines = out.split("\n")
        eq(lines[:2], ["36", "100"], "idle connections: beyond 64 closed at once, the rest after 5 s")
        assert all(l.startswith("b'error=") or l == "b''" for l in lines[2:6]), out
        eq(lines[6], "root", "sudo after them")
        # The caller killed: the root command it asked for goes too.
        rc, out, err = exec_out(s, "img-1", as_user % shlex.quote("sudo sleep 300 & sleep 0.5; kill -9 $!; sleep 0.5; "
                                                                "grep -l '^sleep$' /proc/[0-9]*/comm | wc -l"))
        eq((rc, out), (0, "0\n"), "the command outlived its caller (%s)" % err)
    finally:
        s.cleanup()


def main():
    run = Runner()
    run.run_all([("explicit_dir_without_image", t_explicit_dir_without_image),
                 ("default_dir_falls_back", t_default_dir_falls_back), ("fake_image_root", t_fake_image_root),
                 ("images_none", t_images_none), ("real_image", t_real_image), ("image_sudo", t_image_sudo)],
                ONLY, VMM, AGENT)
    sys.exit(run.finish())


if __name__ == "__main__":
    main()
