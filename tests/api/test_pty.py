#!/usr/bin/env python3
"""End-to-end tests of the contract's WebSocket Exec (GET
/sandbox.v1.Sandbox/Exec?sandbox=ID, subprotocol connect.sandbox.v1) on a real
`mitos-vmm serve` with the process engine, driven by a hand-written stdlib
WebSocket client: every binary message is one Connect envelope of the
sandbox.v1 Exec schema, as the Mitos SDK's pty sends and reads them.

usage: test_pty.py MITOS_VMM MITOS_AGENT [TEST-NAME-SUBSTRING...]"""
import base64
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mitos_test import Runner, Server, envelope, eq, exec_output, fork_one, parse_envelopes  # noqa: E402
from wsclient import (OP_BINARY, OP_CLOSE, OP_PONG, OP_TEXT, HandshakeError, WebSocket,  # noqa: E402
                      frame)

VMM, AGENT = sys.argv[1], sys.argv[2]
ONLY = sys.argv[3:]
SUBPROTOCOL = "connect.sandbox.v1"


def open_msg(cols=80, rows=24, command=None):
    op = {"pty": {"size": {"cols": cols, "rows": rows}}}
    if command:
        op["command"] = command
    return envelope({"open": op})


def stdin(data):
    return envelope({"stdin": base64.b64encode(data).decode()})


def connect(s, sid, headers=None, **kw):
    h = {"Sec-WebSocket-Protocol": SUBPROTOCOL}
    h.update(s.headers(headers))
    ws = WebSocket("127.0.0.1", s.port, "/sandbox.v1.Sandbox/Exec?sandbox=" + sid, headers=h, **kw)
    eq(ws.headers.get("sec-websocket-protocol"), SUBPROTOCOL, "subprotocol")
    return ws


class Term:
    """Collects ExecResponse messages until a condition holds."""

    def __init__(self, ws):
        self.ws, self.out, self.exit, self.eos, self.closed = ws, b"", None, None, None

    def send(self, env):
        self.ws.send(env, OP_BINARY)

    def until(self, pred, timeout=15, what="output"):
        deadline = time.time() + timeout
        self.ws.sock.settimeout(0.5)
        while not pred(self):
            if time.time() > deadline:
                raise AssertionError("timed out waiting for %s; got %r exit=%r eos=%r" % (
                    what, self.out[-400:], self.exit, self.eos))
            try:
                op, data = self.ws.recv()
            except socket.timeout:
                continue
            if op == OP_BINARY:
                for flags, m in parse_envelopes(data):
                    if flags & 2:
                        self.eos = m
                    elif "stdout" in m:
                        self.out += base64.b64decode(m["stdout"])
                    elif "exit" in m:
                        self.exit = m["exit"]
            elif op == OP_TEXT:
                raise AssertionError("a text message: %r" % data)
            elif op == OP_CLOSE:
                self.closed = self.ws.close_code
                return
        return self


def shell(s, sid, cols=80, rows=24, command=None):
    t = Term(connect(s, sid))
    t.send(open_msg(cols, rows, command))
    return t


def t_echo_hi(s):
    fork_one(s, "pty-echo")
    t = shell(s, "pty-echo")
    t.send(stdin(b"echo hi-$((40+2))\n"))
    # The echoed input holds "$((40+2))", so only the command's output has "hi-42".
    t.until(lambda t: b"hi-42\r\n" in t.out, what="hi-42 from the shell")
    t.send(stdin(b"exit 3\n"))
    t.until(lambda t: t.closed is not None, what="the close after exit")
    eq((t.exit, t.eos), ({"exitCode": 3}, {}), "ExecExit, then a clean end of stream")
    eq(t.closed, 1000, "close code")


def t_resize(s):
    fork_one(s, "pty-resize")
    t = shell(s, "pty-resize", 80, 24)
    t.send(stdin(b"stty size\n"))
    t.until(lambda t: b"24 80" in t.out, what="the initial size")
    t.send(envelope({"resize": {"cols": 132, "rows": 43}}))
    t.send(stdin(b"stty size\n"))
    t.until(lambda t: b"43 132" in t.out, what="the new size")
    # Out-of-range sizes are ignored, not passed on.
    t.send(envelope({"resize": {"cols": 0, "rows": 99999}}))
    t.out = b""
    t.send(stdin(b"stty size; exit\n"))
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
    t = shell(s, "pty-close", command="sleep 424242")
    deadline = time.time() + 10
    while count_procs(s, "pty-close", "sleep [4]24242") != 1:
        assert time.time() < deadline, "the pty command never ran"
        time.sleep(0.1)
    t.ws.close(1000)
    op, data = t.ws.recv()
    eq(op, OP_CLOSE, "the server answers the close")
    eq(t.ws.close_code, 1000, "close code echoed")
    t.ws.shut()
    deadline = time.time() + 10
    while count_procs(s, "pty-close", "sleep [4]24242"):
        assert time.time() < deadline, "the pty command outlived its WebSocket"
        time.sleep(0.1)
    # A client that just drops the TCP connection ends it too.
    t = shell(s, "pty-close", command="sleep 434343")
    deadline = time.time() + 10
    while count_procs(s, "pty-close", "sleep [4]34343") != 1:
        assert time.time() < deadline, "the second pty command never ran"
        time.sleep(0.1)
    t.ws.shut()
    while count_procs(s, "pty-close", "sleep [4]34343"):
        assert time.time() < deadline + 10, "the pty command outlived its connection"
        time.sleep(0.1)


def t_command_exit_closes(s):
    fork_one(s, "pty-cmd")
    t = shell(s, "pty-cmd", command="printf done-%s ok; exit 7")
    t.until(lambda t: t.closed is not None)
    assert b"done-ok" in t.out, t.out
    eq((t.exit, t.eos), ({"exitCode": 7}, {}), "exit")
    eq(t.closed, 1000, "close code")
    # stdinClose: the terminal reads end of input.
    t = shell(s, "pty-cmd", command="cat; echo eof-seen")
    t.send(envelope({"stdinClose": True}))
    t.until(lambda t: t.closed is not None)
    assert b"eof-seen" in t.out, t.out


def t_framing(s):
    fork_one(s, "pty-frames")
    # The open sent with the handshake, before the 101, is not lost.
    t = Term(connect(s, "pty-frames", early=frame(OP_BINARY, open_msg() + stdin(b"echo early-$((1+1))\n"))))
    t.until(lambda t: b"early-2" in t.out, what="messages sent before the 101")
    # One envelope fragmented over two WebSocket frames, a ping in between.
    env = stdin(b"echo frag-$((2*3))\n")
    t.ws.send_raw(frame(OP_BINARY, env[:9], fin=False))
    t.ws.send_raw(frame(9, b"are you there"))
    t.ws.send_raw(frame(0, env[9:], fin=True))
    pong = False
    t.ws.sock.settimeout(10)
    while b"frag-6\r\n" not in t.out:
        op, data = t.ws.recv()
        if op == OP_PONG:
            eq(data, b"are you there", "pong payload")
            pong = True
        elif op == OP_BINARY:
            for _, m in parse_envelopes(data):
                t.out += base64.b64decode(m.get("stdout", ""))
    assert pong, "no pong"
    # 300 KB of input arrives whole (in lines: a terminal's line buffer holds 4 KiB).
    t.send(stdin(b"stty -echo; head -c 300000 | wc -c\n"))
    time.sleep(0.3)
    for i in range(30):
        t.send(stdin((b"y" * 99 + b"\n") * 100))
    t.until(lambda t: b"300000" in t.out, timeout=30, what="300000 bytes counted")
    # An unmasked client frame is a protocol error: close 1002, and the pty ends.
    t.ws.send_raw(frame(OP_BINARY, b"x", mask=False))
    t.until(lambda t: t.closed is not None)
    eq(t.closed, 1002, "protocol error close code")


def t_protocol_errors(s):
    fork_one(s, "pty-proto")
    for what, payload, code in [("bad UTF-8 in a text frame", frame(OP_TEXT, b"\xff\xfe"), 1007),
                                ("a message over 1 MiB", frame(OP_BINARY, b"z" * ((1 << 20) + 5)), 1009)]:
        t = Term(connect(s, "pty-proto"))
        t.ws.send_raw(payload)
        t.until(lambda t: t.closed is not None, what="close after " + what)
        eq(t.closed, code, what)
    # Messages that are not the Exec schema end the stream with a Connect error.
    for what, data in [("stdin before open", stdin(b"x")), ("not an envelope", b"\x00\x00"),
                       ("not JSON", envelope({"open": 1})[:5] + b"{nope"),
                       ("a size out of range", open_msg(cols=0)), ("args", envelope({"open": {"args": ["a"]}}))]:
        t = Term(connect(s, "pty-proto"))
        if what == "not JSON":
            data = b"\x00" + len(b"{nope").to_bytes(4, "big") + b"{nope"
        t.send(data)
        t.until(lambda t: t.closed is not None, what="close after " + what)
        eq((t.eos or {}).get("error", {}).get("code"), "invalid_argument", what)
        eq(t.closed, 1000, "close code after " + what)


def t_errors(s):
    fork_one(s, "pty-err")
    st, r = s.request("GET", "/sandbox.v1.Sandbox/Exec?sandbox=pty-err")
    eq((st, r["error"]["code"]), (400, "invalid_input"), "not a WebSocket")
    for sid, want in [("nope", (404, "not_found")), ("bad%20id", (400, "invalid_input")), ("", (400, "invalid_input"))]:
        try:
            WebSocket("127.0.0.1", s.port, "/sandbox.v1.Sandbox/Exec" + ("?sandbox=" + sid if sid else ""),
                      headers=s.headers())
            raise AssertionError("%s: upgraded" % sid)
        except HandshakeError as e:
            eq((e.status, json.loads(e.body)["error"]["code"]), want, sid)
    s.request("POST", "/v1/pause", {"sandbox": "pty-err"})
    try:
        connect(s, "pty-err")
        raise AssertionError("paused: upgraded")
    except HandshakeError as e:
        eq((e.status, json.loads(e.body)["error"]["code"]), (409, "sandbox_not_running"), "paused")
    s.request("POST", "/v1/resume", {"sandbox": "pty-err"})
    # A terminal that cannot start says so in the end of stream.
    t = Term(connect(s, "pty-err"))
    t.send(envelope({"open": {"cwd": "/no/such/dir", "pty": {}}}))
    t.until(lambda t: t.closed is not None)
    assert t.eos and t.eos["error"]["message"], t.eos


def t_sandbox_deleted(s):
    fork_one(s, "pty-del")
    t = shell(s, "pty-del")
    t.send(stdin(b"echo ready\n"))
    t.until(lambda t: b"ready\r\n" in t.out)
    eq(s.request("DELETE", "/v1/sandboxes/pty-del")[0], 200, "delete")
    t.until(lambda t: t.closed is not None, what="close after delete")
    eq(t.eos["error"]["code"], "failed_precondition", "the sandbox went away")


def t_auth(vmm, agent):
    s = Server(vmm, agent, token="pty-secret-token")
    try:
        fork_one(s, "pty-auth")
        try:
            WebSocket("127.0.0.1", s.port, "/sandbox.v1.Sandbox/Exec?sandbox=pty-auth")
            raise AssertionError("upgraded without a token")
        except HandshakeError as e:
            eq(e.status, 401, "no token")
        t = shell(s, "pty-auth")
        t.send(stdin(b"exit\n"))
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
