#!/usr/bin/env python3
"""End-to-end tests of GET /v1/pty (WebSocket) on a real `mitos-vmm serve` with
the process engine, driven by a hand-written stdlib WebSocket client.

usage: test_pty.py MITOS_VMM MITOS_AGENT [TEST-NAME-SUBSTRING...]"""
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mitos_test import Runner, Server, eq, exec_output, fork_one  # noqa: E402
from wsclient import (OP_BINARY, OP_CLOSE, OP_PONG, OP_TEXT, HandshakeError, WebSocket,  # noqa: E402
                      frame)

VMM, AGENT = sys.argv[1], sys.argv[2]
ONLY = sys.argv[3:]


def pty(s, query, **kw):
    return WebSocket("127.0.0.1", s.port, "/v1/pty?" + query, headers=s.headers(), **kw)


class Term:
    """Collects terminal output until a condition holds."""

    def __init__(self, ws):
        self.ws, self.out, self.exit, self.closed = ws, b"", None, None

    def until(self, pred, timeout=15, what="output"):
        deadline = time.time() + timeout
        self.ws.sock.settimeout(0.5)
        while not pred(self):
            if time.time() > deadline:
                raise AssertionError("timed out waiting for %s; got %r exit=%r" % (what, self.out[-400:],
                                                                                 self.exit))
            try:
                op, data = self.ws.recv()
            except socket.timeout:
                continue
            if op == OP_BINARY:
                self.out += data
            elif op == OP_TEXT:
                self.exit = json.loads(data).get("exit")
            elif op == OP_CLOSE:
                self.closed = self.ws.close_code
                self.close_reason = data[2:]
                return
        return self


def t_echo_hi(s):
    fork_one(s, "pty-echo")
    t = Term(pty(s, "sandbox_id=pty-echo&cols=80&rows=24"))
    t.ws.send(b"echo hi-$((40+2))\n")
    # The echoed input holds "$((40+2))", so only the command's output has "hi-42".
    t.until(lambda t: b"hi-42\r\n" in t.out, what="hi-42 from the shell")
    # Text frames that are not control messages are terminal input too.
    t.ws.send("exit 3\n")
    t.until(lambda t: t.closed is not None, what="the close after exit")
    eq(t.exit, {"exited": True, "exit_code": 3}, "exit message")
    eq(t.closed, 1000, "close code")


def t_resize(s):
    fork_one(s, "pty-resize")
    t = Term(pty(s, "sandbox_id=pty-resize&cols=80&rows=24"))
    t.ws.send(b"stty size\n")
    t.until(lambda t: b"24 80" in t.out, what="the initial size")
    t.ws.send(json.dumps({"resize": {"cols": 132, "rows": 43}}))
    t.ws.send(b"stty size\n")
    t.until(lambda t: b"43 132" in t.out, what="the new size")
    # Out-of-range sizes are ignored, not passed on.
    t.ws.send(json.dumps({"resize": {"cols": 0, "rows": 99999}}))
    t.out = b""
    t.ws.send(b"stty size; exit\n")
    t.until(lambda t: t.closed is not None)
    assert b"43 132" in t.out, t.out


def count_procs(s, sid, marker):
    # Anchored: a shell running the command has it in its arguments too; '[x]'
    # keeps the pattern from matching the grep looking for it.
    out, _ = exec_output(s, sid, {"command": "for p in /proc/[0-9]*; do tr '\\0' ' ' <$p/cmdline 2>/dev/null; "
                                             "echo; done | grep -c '^%s' || true" % marker})
    return int(out.strip() or 0)


def t_client_close_ends_pty(s):
    fork_one(s, "pty-close")
    ws = pty(s, "sandbox_id=pty-close&cmd=" + "sleep%20424242")
    deadline = time.time() + 10
    while count_procs(s, "pty-close", "sleep [4]24242") != 1:
        assert time.time() < deadline, "the pty command never ran"
        time.sleep(0.1)
    ws.close(1000)
    op, data = ws.recv()
    eq(op, OP_CLOSE, "the server answers the close")
    eq(ws.close_code, 1000, "close code echoed")
    ws.shut()
    deadline = time.time() + 10
    while count_procs(s, "pty-close", "sleep [4]24242"):
        assert time.time() < deadline, "the pty command outlived its WebSocket"
        time.sleep(0.1)
    # A client that just drops the TCP connection ends it too.
    ws = pty(s, "sandbox_id=pty-close&cmd=" + "sleep%20434343")
    deadline = time.time() + 10
    while count_procs(s, "pty-close", "sleep [4]34343") != 1:
        assert time.time() < deadline, "the second pty command never ran"
        time.sleep(0.1)
    ws.shut()
    while count_procs(s, "pty-close", "sleep [4]34343"):
        assert time.time() < deadline + 10, "the pty command outlived its connection"
        time.sleep(0.1)


def t_command_exit_closes(s):
    fork_one(s, "pty-cmd")
    t = Term(pty(s, "sandbox_id=pty-cmd&cmd=" + "printf%20done-%25s%20ok%3B%20exit%207"))
    t.until(lambda t: t.closed is not None)
    assert b"done-ok" in t.out, t.out
    eq(t.exit, {"exited": True, "exit_code": 7}, "exit")
    eq(t.closed, 1000, "close code")


def t_framing(s):
    fork_one(s, "pty-frames")
    # A frame sent with the handshake, before the 101, is not lost.
    t = Term(pty(s, "sandbox_id=pty-frames", early=frame(OP_BINARY, b"echo early-$((1+1))\n")))
    t.until(lambda t: b"early-2" in t.out, what="input sent before the 101")
    # Fragmented input, a ping in between.
    t.ws.send_raw(frame(OP_BINARY, b"echo fr", fin=False))
    t.ws.send_raw(frame(9, b"are you there"))
    t.ws.send_raw(frame(0, b"ag-$((2*3))\n", fin=True))
    pong = False
    t.ws.sock.settimeout(10)
    while b"frag-6\r\n" not in t.out:
        op, data = t.ws.recv()
        if op == OP_PONG:
            eq(data, b"are you there", "pong payload")
            pong = True
        elif op == OP_BINARY:
            t.out += data
    assert pong, "no pong"
    # 300 KB of input arrives whole (in lines: a terminal's line buffer holds 4 KiB).
    t.ws.send(b"stty -echo; head -c 300000 | wc -c\n")
    time.sleep(0.3)
    for i in range(30):
        t.ws.send((b"y" * 99 + b"\n") * 100)
    t.until(lambda t: b"300000" in t.out, timeout=30, what="300000 bytes counted")
    # An unmasked client frame is a protocol error: close 1002, and the pty ends.
    t.ws.send_raw(frame(OP_BINARY, b"x", mask=False))
    t.until(lambda t: t.closed is not None)
    eq(t.closed, 1002, "protocol error close code")


def t_protocol_errors(s):
    fork_one(s, "pty-proto")
    for what, payload, code in [("bad UTF-8 in a text frame", frame(OP_TEXT, b"\xff\xfe"), 1007),
                                ("a message over 1 MiB", frame(OP_BINARY, b"z" * ((1 << 20) + 5)), 1009)]:
        t = Term(pty(s, "sandbox_id=pty-proto"))
        t.ws.send_raw(payload)
        t.until(lambda t: t.closed is not None, what="close after " + what)
        eq(t.closed, code, what)


def t_errors(s):
    fork_one(s, "pty-err")
    st, r = s.request("GET", "/v1/pty?sandbox_id=pty-err")
    eq((st, r["error"]["code"]), (400, "invalid_argument"), "not a WebSocket")
    for q, want in [("sandbox_id=nope", (404, "not_found")), ("sandbox_id=bad%20id", (400, "invalid_sandbox_id")),
                    ("", (400, "invalid_sandbox_id")), ("sandbox_id=pty-err&cols=0", (400, "invalid_argument")),
                    ("sandbox_id=pty-err&rows=abc", (400, "invalid_argument")),
                    ("sandbox_id=pty-err&cmd=", (400, "invalid_argument"))]:
        try:
            pty(s, q)
            raise AssertionError("%s: upgraded" % q)
        except HandshakeError as e:
            eq((e.status, json.loads(e.body)["error"]["code"]), want, q)
    st, r = s.request("POST", "/v1/pty")
    eq(st, 405, "POST")
    s.request("POST", "/v1/pause", {"sandbox_id": "pty-err"})
    try:
        pty(s, "sandbox_id=pty-err")
        raise AssertionError("paused: upgraded")
    except HandshakeError as e:
        eq((e.status, json.loads(e.body)["error"]["code"]), (409, "sandbox_not_running"), "paused")
    s.request("POST", "/v1/resume", {"sandbox_id": "pty-err"})


def t_sandbox_deleted(s):
    fork_one(s, "pty-del")
    t = Term(pty(s, "sandbox_id=pty-del"))
    t.ws.send(b"echo ready\n")
    t.until(lambda t: b"ready\r\n" in t.out)
    eq(s.request("DELETE", "/v1/sandboxes/pty-del")[0], 200, "delete")
    t.until(lambda t: t.closed is not None, what="close after delete")
    eq(t.closed, 1011, "close code")


def t_auth(vmm, agent):
    s = Server(vmm, agent, token="pty-secret-token")
    try:
        fork_one(s, "pty-auth")
        try:
            WebSocket("127.0.0.1", s.port, "/v1/pty?sandbox_id=pty-auth")
            raise AssertionError("upgraded without a token")
        except HandshakeError as e:
            eq(e.status, 401, "no token")
        t = Term(WebSocket("127.0.0.1", s.port, "/v1/pty?sandbox_id=pty-auth",
                           headers={"Authorization": "Bearer pty-secret-token"}))
        t.ws.send(b"exit\n")
        t.until(lambda t: t.closed is not None)
    finally:
        s.cleanup()


def main():
    run = Runner()
    s = Server(VMM, AGENT)
    tests = [("echo_hi", t_echo_hi), ("resize", t_resize), ("client_close_ends_pty", t_client_close_ends_pty),
             ("command_exit_closes", t_command_exit_closes), ("framing", t_framing),
             ("protocol_errors", t_protocol_errors), ("errors", t_errors),
             ("sandbox_deleted", t_sandbox_deleted)]
    try:
        run.run_all(tests, ONLY, s)
    finally:
        run.stop_server(s)
    run.run_all([("auth", t_auth)], ONLY, VMM, AGENT)
    sys.exit(run.finish())


if __name__ == "__main__":
    main()
