#!/usr/bin/env python3
"""End-to-end tests of previews: POST /v1/preview and the proxy, by path and by
Host, against servers running inside a process-engine sandbox (python3 -m
http.server, and preview_app.py: streaming, echo, headers, a WebSocket echo).

usage: test_preview.py MITOS_VMM MITOS_AGENT [TEST-NAME-SUBSTRING...]"""
import base64
import hashlib
import json
import os
import socket
import stat
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mitos_test import (Runner, Server, eq, exec_output, exit_of, fork_one, raw_exchange, status_of,  # noqa: E402
                        wait_running, wait_until, write_file)
import h2mini  # noqa: E402
from wsclient import OP_BINARY, OP_CLOSE, OP_TEXT, HandshakeError, WebSocket  # noqa: E402

VMM, AGENT = sys.argv[1], sys.argv[2]
ONLY = sys.argv[3:]
HERE = os.path.dirname(os.path.abspath(__file__))
DOMAIN = "preview.test"
SID = "pv-main"
ctx = {}


def sh(s, sid, cmd):
    out, msgs = exec_output(s, sid, {"command": cmd, "timeoutSeconds": 60})
    end = exit_of(msgs)
    eq(end and end["exitCode"], 0, "exit code of %r (%r)" % (cmd, msgs))
    return out


def fork(s, sid):
    fork_one(s, sid, timeout=900)


def setup(s):
    fork(s, SID)
    with open(os.path.join(HERE, "preview_app.py"), "rb") as f:
        app = f.read()
    st, msgs = write_file(s, SID, "/srv/app.py", app)
    eq((st, msgs[-1]), (200, (2, {})), "write app.py (%r)" % (msgs,))
    out = sh(s, SID, "mkdir -p /srv/www && cd /srv/www && printf 'hello from the sandbox\\n' > index.html && "
                     "head -c 1048576 /dev/urandom > big.bin && sha256sum big.bin && "
                     "(setsid python3 -m http.server 8000 --bind 127.0.0.1 >/tmp/http.log 2>&1 </dev/null &) && "
                     "(setsid python3 /srv/app.py 8001 >/tmp/app.log 2>&1 </dev/null &) && "
                     "for p in 8000 8001; do for i in $(seq 100); do "
                     "(exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done; done")
    ctx["big_sha"] = out.split()[0]


def mint(s, sid=SID, port=8000, ttl=None, headers=None):
    body = {"sandbox": sid, "port": port}
    if ttl is not None:
        body["ttl"] = ttl
    st, r = s.request("POST", "/v1/preview", body, headers=headers)
    eq(st, 200, "mint (%r)" % (r,))
    return r


def get(s, target, headers=None, method="GET", body=None):
    c = s.conn()
    c.request(method, target, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, r, data


def error_code(data):
    return json.loads(data)["error"]["code"]


def path_of(url):
    u = urllib.parse.urlsplit(url)
    return u.path + ("?" + u.query if u.query else "")


def t_mint(s):
    r = mint(s, ttl=120)
    for k in ("url", "path_url", "host_url", "token", "expires_unix", "expires_at"):
        assert k in r, (k, r)
    eq(r["port"], 8000, "port")
    assert abs(r["expires_unix"] - time.time() - 120) < 5, r
    assert r["host_url"].startswith("http://%s-8000.%s:%d/?mitos_token=" % (SID, DOMAIN, s.port)), r
    assert r["path_url"] == "http://127.0.0.1:%d/preview/%s/8000/?mitos_token=%s" % (s.port, SID, r["token"]), r
    eq(r["url"], r["host_url"], "url is the host URL when --preview-domain is set")
    cases = [({"sandbox": SID, "port": 0}, 400, "invalid_input"),
             ({"sandbox": SID, "port": 65536}, 400, "invalid_input"),
             ({"sandbox": SID, "port": "80"}, 400, "invalid_input"),
             ({"sandbox": SID, "port": 80, "ttl": 0}, 400, "invalid_input"),
             ({"sandbox": SID, "port": 80, "ttl": 10 ** 9}, 400, "invalid_input"),
             ({"sandbox": "no-such", "port": 80}, 404, "not_found"),
             ({"sandbox": "bad id", "port": 80}, 400, "invalid_input"),
             ({"port": 80}, 400, "invalid_input")]
    for body, st, code in cases:
        got, r = s.request("POST", "/v1/preview", body)
        eq((got, r["error"]["code"]), (st, code), repr(body))
    eq(s.request("GET", "/v1/preview")[0], 405, "GET /v1/preview")


def t_by_path(s):
    r = mint(s)
    st, resp, data = get(s, path_of(r["path_url"]))
    eq((st, data), (200, b"hello from the sandbox\n"), "index through the proxy")
    cookie = resp.getheader("Set-Cookie")
    assert cookie and cookie.startswith("mitos_preview_token=" + r["token"] + ";"), cookie
    assert "Path=/preview/%s/8000/" % SID in cookie and "HttpOnly" in cookie, cookie
    eq(resp.getheader("Connection"), "close", "Connection")
    # Subresources carry the cookie only.
    ck = {"Cookie": cookie.split(";")[0]}
    st, resp, data = get(s, "/preview/%s/8000/big.bin" % SID, ck)
    eq(st, 200, "big.bin")
    eq(len(data), 1 << 20, "big.bin length")
    eq(hashlib.sha256(data).hexdigest(), ctx["big_sha"], "big.bin bytes")
    assert resp.getheader("Set-Cookie") is None, "no new cookie for a cookie request"
    st, _, data = get(s, "/preview/%s/8000/nope" % SID, ck)
    eq(st, 404, "the upstream's own 404 goes through")
    # Without the trailing slash: a redirect that keeps the query.
    st, resp, _ = get(s, "/preview/%s/8000?mitos_token=%s" % (SID, r["token"]))
    eq((st, resp.getheader("Location")), (308, "/preview/%s/8000/?mitos_token=%s" % (SID, r["token"])), "redirect")
    for bad in ("/preview/", "/preview/%s" % SID, "/preview/%s/" % SID, "/preview/%s/0/" % SID,
                "/preview/%s/99999/" % SID, "/preview/%s/80x/" % SID, "/preview/bad%20id/8000/"):
        st, _, data = get(s, bad, ck)
        eq((st, error_code(data)), (404, "not_found"), bad)


def t_by_host(s):
    r = mint(s)
    host = "%s-8000.%s:%d" % (SID, DOMAIN, s.port)
    st, resp, data = get(s, path_of(r["host_url"]), {"Host": host})
    eq((st, data), (200, b"hello from the sandbox\n"), "index by Host")
    cookie = resp.getheader("Set-Cookie")
    assert "Path=/;" in cookie, cookie
    ck = cookie.split(";")[0]
    # Any path, the API's included, belongs to the sandbox on its host.
    st, _, data = get(s, "/index.html", {"Host": host, "Cookie": ck})
    eq((st, data), (200, b"hello from the sandbox\n"), "cookie by Host")
    st, _, data = get(s, "/v1/health", {"Host": host, "Cookie": ck})
    eq(st, 404, "/v1/health on a preview host is the upstream's")
    # A Host with whitespace after it is the same host (RFC 9110 5.5), as a proxy in
    # front reads it.
    raw = raw_exchange(s.port, ("GET /index.html HTTP/1.1\r\nHost: %s \r\nCookie: %s\r\n"
                                "Connection: close\r\n\r\n" % (host, ck)).encode())
    assert raw.endswith(b"hello from the sandbox\n"), raw[-200:]
    # Hosts are case-insensitive.
    st, _, data = get(s, "/index.html", {"Host": host.upper(), "Cookie": ck})
    eq(st, 200, "upper-case Host")
    st, _, data = get(s, "/", {"Host": "%s-8000.%s" % (SID, DOMAIN)})
    eq((st, error_code(data)), (401, "unauthorized"), "no token by Host")
    for bad in ("%s.%s" % (SID, DOMAIN), "%s-0.%s" % (SID, DOMAIN), "x.%s-8000.%s" % (SID, DOMAIN)):
        st, _, data = get(s, "/", {"Host": bad, "Cookie": ck})
        assert st in (401, 404), (bad, st, data)


def t_bad_tokens(s):
    r = mint(s)
    tok = r["token"]
    flipped = tok[:-1] + ("0" if tok[-1] != "0" else "1")
    exp, inst, mac = tok.split(".")
    later = "%d.%s.%s" % (int(exp) + 3600, inst, mac)
    other_instance = "%s.%d.%s" % (exp, int(inst) + 1, mac)
    other_port = mint(s, port=8001)["token"]
    base = "/preview/%s/8000/" % SID
    for what, target, h in [("tampered MAC", base + "?mitos_token=" + flipped, {}),
                            ("extended expiry", base + "?mitos_token=" + later, {}),
                            ("another instance", base + "?mitos_token=" + other_instance, {}),
                            ("token of another port", base + "?mitos_token=" + other_port, {}),
                            ("garbage", base + "?mitos_token=xyz", {}),
                            ("empty", base + "?mitos_token=", {}),
                            ("no token", base, {}),
                            ("tampered cookie", base, {"Cookie": "mitos_preview_token=" + flipped}),
                            ("bearer is not a preview token", base, {"Authorization": "Bearer " + tok})]:
        st, _, data = get(s, target, h)
        eq((st, error_code(data)), (401, "unauthorized"), what)
        assert tok not in data.decode(), "the token comes back in an error"
    # A token of another sandbox.
    fork(s, "pv-other")
    theirs = mint(s, sid="pv-other")["token"]
    st, _, data = get(s, base + "?mitos_token=" + theirs)
    eq(st, 401, "token of another sandbox")
    s.request("DELETE", "/v1/sandboxes/pv-other")
    # Expiry.
    short = mint(s, ttl=1)["token"]
    st, _, _ = get(s, base + "?mitos_token=" + short)
    eq(st, 200, "fresh short token")
    time.sleep(2.1)
    st, _, data = get(s, base + "?mitos_token=" + short)
    eq((st, error_code(data)), (401, "unauthorized"), "expired")
    assert "expired" in json.loads(data)["error"]["message"], data
    # A good cookie next to an expired one still works.
    st, _, _ = get(s, base, {"Cookie": "mitos_preview_token=%s; mitos_preview_token=%s" % (short, tok)})
    eq(st, 200, "expired and valid cookies")


def t_unknown_sandbox(s):
    fork(s, "pv-gone")
    r = mint(s, sid="pv-gone")
    eq(s.request("DELETE", "/v1/sandboxes/pv-gone")[0], 200, "delete")
    st, _, data = get(s, path_of(r["path_url"]))
    eq((st, error_code(data)), (404, "not_found"), "deleted sandbox by path")
    st, _, data = get(s, path_of(r["host_url"]), {"Host": "pv-gone-8000." + DOMAIN})
    eq((st, error_code(data)), (404, "not_found"), "deleted sandbox by Host")
    # A new sandbox with the same id: the old sandbox's token opens nothing of it.
    fork(s, "pv-gone")
    st, _, data = get(s, path_of(r["path_url"]))
    eq((st, error_code(data)), (404, "not_found"), "a token of an earlier sandbox with the same id")
    st, _, data = get(s, path_of(mint(s, sid="pv-gone")["path_url"]))
    assert st != 404 and st != 401, "a token of the new sandbox: %r %r" % (st, data)
    s.request("DELETE", "/v1/sandboxes/pv-gone")


def t_no_listener(s):
    r = mint(s, port=8009)
    st, _, data = get(s, path_of(r["path_url"]))
    eq((st, error_code(data)), (502, "unavailable"), "nothing on the port")
    assert "8009" in json.loads(data)["error"]["message"], data


def t_expose(s):
    """/v1/sandboxes/{id}/expose/{port}/...: the same proxy for holders of the node's
    token (this server has none), everything after the port the upstream's path."""
    base = "/v1/sandboxes/%s/expose" % SID
    st, _, data = get(s, base + "/8000/")
    eq((st, data), (200, b"hello from the sandbox\n"), "index through expose")
    st, _, data = get(s, base + "/8000")
    eq((st, data), (200, b"hello from the sandbox\n"), "the port alone is the upstream's /")
    st, _, data = get(s, base + "/8000/big.bin")
    eq(hashlib.sha256(data).hexdigest(), ctx["big_sha"], "big.bin bytes")
    st, _, data = get(s, base + "/8001/headers?a=1")
    h = json.loads(data)
    eq((h["path"], h["headers"].get("x-forwarded-prefix")), ("/headers?a=1", base + "/8001"), "path and prefix")
    body = os.urandom(100000)
    st, _, data = get(s, base + "/8001/echo", method="POST", body=body)
    eq((st, data == body), (200, True), "POST through expose")
    for bad, code in (("/0/", 400), ("/99999/", 400), ("/80x/", 400), ("/8009/", 502)):
        st, _, data = get(s, base + bad)
        eq(st, code, "expose %s (%r)" % (bad, data))
    st, _, data = get(s, "/v1/sandboxes/no-such/expose/8000/")
    eq((st, error_code(data)), (404, "not_found"), "expose of a missing sandbox")
    # The proxy writes HTTP/1.1 itself: over HTTP/2 the upstream's bytes would land
    # raw on the client's connection (frames of its other streams, the sandbox's to
    # forge). Refused; the connection serves on.
    c = h2mini.H2(s.port)
    try:
        c.request(1, "GET", base + "/8000/")
        body = h2mini.body_of(c.until(1, 10))
        assert b"http_version_not_supported" in body and b"hello" not in body, body
        c.request(3, "GET", "/v1/health")
        assert b'"ok"' in h2mini.body_of(c.until(3, 10)), "the connection serves on"
    finally:
        c.close()


def t_forward(s):
    """POST /v1/sandboxes/{id}/forward: a loopback listener bridged to the guest port."""
    import http.client
    import threading
    st, r = s.request("POST", "/v1/sandboxes/%s/forward" % SID, {"guest_port": 8000})
    eq((st, r["guest_port"]), (200, 8000), "forward (%r)" % (r,))
    host, port = r["host"].rsplit(":", 1)
    eq(host, "127.0.0.1", "loopback only")
    results = []

    def fetch(path):
        c = http.client.HTTPConnection(host, int(port), timeout=20)
        c.request("GET", path)
        resp = c.getresponse()
        results.append((path, resp.status, resp.read()))
        c.close()
    threads = [threading.Thread(target=fetch, args=(p,)) for p in ("/", "/big.bin", "/big.bin", "/")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    eq(sorted((p, st) for p, st, _ in results), [("/", 200), ("/", 200), ("/big.bin", 200), ("/big.bin", 200)],
       "four connections at once")
    for p, _, data in results:
        if p == "/big.bin":
            eq(hashlib.sha256(data).hexdigest(), ctx["big_sha"], "big.bin through the forward")
    st, r = s.request("POST", "/v1/sandboxes/%s/forward" % SID, {"guest_port": 8001})
    c = http.client.HTTPConnection("127.0.0.1", int(r["host"].rsplit(":", 1)[1]), timeout=20)
    body = os.urandom(2 * 1024 * 1024)
    c.request("POST", "/echo", body=body)
    eq(c.getresponse().read() == body, True, "2 MiB each way")
    c.close()
    st, r = s.request("POST", "/v1/sandboxes/%s/forward" % SID, {"guest_port": 8009})
    sock = socket.create_connection(("127.0.0.1", int(r["host"].rsplit(":", 1)[1])), timeout=10)
    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    eq(sock.recv(100), b"", "nothing listens there: the connection closes")
    sock.close()
    for bad in ({"guest_port": 0}, {"guest_port": 70000}, {"guest_port": "80"}, {}):
        st, r = s.request("POST", "/v1/sandboxes/%s/forward" % SID, bad)
        eq(st, 400, "forward %r" % bad)
    st, r = s.request("POST", "/v1/sandboxes/no-such/forward", {"guest_port": 80})
    eq(st, 404, "forward of a missing sandbox")
    # A sandbox's forwards are capped, and they go with it.
    fork(s, "pv-fwd")
    hosts = []
    for i in range(16):
        st, r = s.request("POST", "/v1/sandboxes/pv-fwd/forward", {"guest_port": 8000})
        eq(st, 200, "forward %d" % i)
        hosts.append(int(r["host"].rsplit(":", 1)[1]))
    st, r = s.request("POST", "/v1/sandboxes/pv-fwd/forward", {"guest_port": 8000})
    eq((st, r["error"]["code"]), (429, "quota_exceeded"), "the 17th forward")
    s.request("DELETE", "/v1/sandboxes/pv-fwd")

    def all_closed():
        for p in hosts:
            try:
                socket.create_connection(("127.0.0.1", p), timeout=2).close()
                return False
            except OSError:
                pass
        return True
    wait_until(all_closed, 10, "a deleted sandbox's listeners close")


def timed_get(s, target, headers=""):
    """Sends a GET on a raw socket; returns [(seconds since sent, bytes)]."""
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=20)
    t0 = time.time()
    sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s\r\n" % (target, headers)).encode())
    got = []
    while True:
        b = sock.recv(65536)
        if not b:
            break
        got.append((time.time() - t0, b))
    sock.close()
    return got


def t_streaming(s):
    tok = mint(s, port=8001)["token"]
    got = timed_get(s, "/preview/%s/8001/stream?mitos_token=%s" % (SID, tok))
    data = b"".join(b for _, b in got)
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert b"Transfer-Encoding: chunked" in data, data[:400]
    seen, first = b"", None
    for t, b in got:
        seen += b
        if first is None and b"tick 0" in seen:
            first = t
    last = got[-1][0]
    assert b"tick 4" in data and data.endswith(b"0\r\n\r\n"), data[-100:]
    assert last - first > 1.2, "the chunks came at once (first %.2fs, last %.2fs)" % (first, last)
    got = timed_get(s, "/preview/%s/8001/sse?mitos_token=%s" % (SID, tok))
    data = b"".join(b for _, b in got)
    assert b"text/event-stream" in data and b"data: event 3" in data, data
    arrivals = [t for t, b in got if b"data: event" in b]
    assert len(arrivals) >= 3 and arrivals[-1] - arrivals[0] > 0.8, got


def t_post(s):
    tok = mint(s, port=8001)["token"]
    body = os.urandom(300000)
    st, _, data = get(s, "/preview/%s/8001/echo?mitos_token=%s" % (SID, tok), method="POST", body=body)
    eq((st, data == body), (200, True), "POST with Content-Length")
    chunks = [os.urandom(n) for n in (1, 5000, 70000, 3)]
    req = ("POST /preview/%s/8001/echo?mitos_token=%s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           % (SID, tok)).encode()
    req += b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    raw = raw_exchange(s.port, req, timeout=20)
    eq(status_of(raw), 200, "chunked POST")
    eq(raw.partition(b"\r\n\r\n")[2], b"".join(chunks), "chunked POST echo")


def t_headers(s):
    tok = mint(s, port=8001)["token"]
    st, _, data = get(s, "/preview/%s/8001/headers?x=1&mitos_token=%s&y=%%2F" % (SID, tok),
                      {"Cookie": "a=1; mitos_preview_token=%s; b=2" % tok, "X-Custom": "kept",
                       "Connection": "close, X-Drop-Me", "X-Drop-Me": "hop-by-hop",
                       "X-Access-Token": "envd-secret", "E2B-Traffic-Access-Token": "traffic-secret"})
    eq(st, 200, "headers")
    r = json.loads(data)
    eq(r["path"], "/headers?x=1&y=%2F", "upstream path: prefix and token gone, escapes kept")
    h = r["headers"]
    eq(h.get("cookie"), "a=1; b=2", "our cookie removed, others kept")
    eq(h.get("x-custom"), "kept", "end-to-end header")
    eq(h.get("x-forwarded-prefix"), "/preview/%s/8001" % SID, "prefix")
    eq(h.get("connection"), "close", "upstream connection")
    assert "x-drop-me" not in h, h
    assert "x-access-token" not in h and "e2b-traffic-access-token" not in h, "E2B's tokens reached the sandbox"
    assert tok not in json.dumps(r), "the token reached the sandbox"
    st, _, data = get(s, "/headers?mitos_token=" + tok, {"Host": "%s-8001.%s" % (SID, DOMAIN)})
    h = json.loads(data)["headers"]
    assert "x-forwarded-prefix" not in h, h
    eq(h.get("x-forwarded-host"), "%s-8001.%s" % (SID, DOMAIN), "forwarded host")


def ws_echo(ws):
    ws.send("hello")
    eq(ws.recv(), (OP_TEXT, b"hello"), "text echo")
    blob = os.urandom(100000)
    ws.send(blob)
    eq(ws.recv(), (OP_BINARY, blob), "binary echo")
    ws.close(1000)
    op, _ = ws.recv()
    eq(op, OP_CLOSE, "close echoed")
    ws.shut()


def t_upstream_framing(s):
    """An upstream head a proxy in front of serve could read two ways (two lengths, a
    length beside chunking, folded or bare-LF lines, a non-token name, an encoding not
    ending in chunked) is a 502; a length beside chunking is dropped, as RFC 9112 6.3
    has an intermediary do; a cookie's Domain attribute is dropped."""
    tok = mint(s, port=8001)["token"]
    base = "/preview/%s/8001/rawhead/%%d?mitos_token=%s" % (SID, tok)
    for i in range(6):
        st, _, data = get(s, base % i)
        eq(st, 502, "head %d (%r)" % (i, data[:200]))
        assert b"two ways" in data, data
    st, r, data = get(s, base % 6)
    eq((st, data), (200, b"ok"), "chunked, its length dropped")
    eq(r.getheader("Content-Length"), None, "no Content-Length beside chunking")
    # A sandbox's cookies stay with its host: one set for the whole preview domain would
    # go to every other sandbox's pages (cookie tossing, a cookie bomb).
    st, r, data = get(s, "/preview/%s/8001/cookies?mitos_token=%s" % (SID, tok))
    cookies = [c for c in r.msg.get_all("Set-Cookie") if not c.startswith("mitos_preview_token")]
    eq(cookies, ["a=1; Path=/; HttpOnly", "b=2; path=/x", "c=3; Domainish=x"], "Domain attributes removed")


def t_websocket(s):
    tok = mint(s, port=8001)["token"]
    ws = WebSocket("127.0.0.1", s.port, "/preview/%s/8001/ws?mitos_token=%s" % (SID, tok))
    assert "set-cookie" not in ws.headers, ws.head
    ws_echo(ws)
    ws = WebSocket("127.0.0.1", s.port, "/ws?mitos_token=" + tok,
                   headers={"Host": "%s-8001.%s:%d" % (SID, DOMAIN, s.port)})
    ws_echo(ws)
    try:
        WebSocket("127.0.0.1", s.port, "/preview/%s/8001/ws" % SID)
        raise AssertionError("upgraded without a token")
    except HandshakeError as e:
        eq(e.status, 401, "WebSocket without a token")


def t_paused(s):
    tok = mint(s)["token"]
    s.request("POST", "/v1/pause", {"sandbox": SID})
    try:
        st, _, data = get(s, "/preview/%s/8000/?mitos_token=%s" % (SID, tok))
        eq((st, error_code(data)), (409, "sandbox_not_running"), "paused")
    finally:
        s.request("POST", "/v1/resume", {"sandbox": SID})
    st, _, _ = get(s, "/preview/%s/8000/?mitos_token=%s" % (SID, tok))
    eq(st, 200, "resumed")


def t_key(s):
    path = os.path.join(s.state_dir, "preview.key")
    st = os.stat(path)
    eq(stat.S_IMODE(st.st_mode), 0o600, "key mode")
    eq(st.st_size, 32, "key size")
    with open(path, "rb") as f:
        key = f.read()
    log = s.stderr() + "".join(s.stdout)
    assert key.hex() not in log and base64.b64encode(key).decode() not in log, "the key was logged"


def t_token_server(vmm, agent):
    """With a bearer token: minting needs it, previews do not, and it never reaches
    the sandbox; the key survives a restart, so do URLs."""
    state = None
    s = Server(vmm, agent, token="node-secret-token", extra=["--preview-domain", DOMAIN, "--preview-paths"])
    try:
        state = s.state_dir
        fork(s, "pv-auth")
        with open(os.path.join(HERE, "preview_app.py"), "rb") as f:
            write_file(s, "pv-auth", "/srv/app.py", f.read())
        sh(s, "pv-auth", "(setsid python3 /srv/app.py 8001 >/dev/null 2>&1 </dev/null &); for i in $(seq 100); do "
                         "(exec 3<>/dev/tcp/127.0.0.1/8001) 2>/dev/null && break; sleep 0.1; done")
        c = s.conn()
        c.request("POST", "/v1/preview", body=json.dumps({"sandbox": "pv-auth", "port": 8001}))
        eq(c.getresponse().status, 401, "minting without the bearer token")
        c.close()
        tok = mint(s, sid="pv-auth", port=8001)["token"]
        st, _, data = get(s, "/preview/pv-auth/8001/headers?mitos_token=" + tok,
                          {"Authorization": "Bearer node-secret-token"})
        eq(st, 200, "preview with the node's bearer")
        assert "authorization" not in json.loads(data)["headers"], data
        assert b"node-secret-token" not in data, data
        # Every other form of it is dropped too: a tab, a list, bare, in another header,
        # a second Authorization header, a cookie.
        for extra in ("Authorization: Bearer\tnode-secret-token", "Authorization: Bearer node-secret-token, x",
                      "Authorization: node-secret-token", "Proxy-Authorization: Bearer node-secret-token",
                      "X-Api-Key: node-secret-token", "Cookie: a=node-secret-token",
                      "Authorization: Basic dXNlcg==\r\nAuthorization: Bearer node-secret-token"):
            raw = raw_exchange(s.port, ("GET /preview/pv-auth/8001/headers?mitos_token=%s HTTP/1.1\r\n"
                                        "Host: x\r\n%s\r\nConnection: close\r\n\r\n" % (tok, extra)).encode())
            eq(status_of(raw), 200, "preview with %r" % extra)
            assert b"node-secret-token" not in raw.partition(b"\r\n\r\n")[2], (extra, raw)
        st, _, data = get(s, "/v1/sandboxes/pv-auth/expose/8001/headers")
        eq(st, 401, "expose without the node's bearer token")
        st, _, data = get(s, "/v1/sandboxes/pv-auth/expose/8001/headers", {"Authorization": "Bearer node-secret-token"})
        eq(st, 200, "expose with the node's bearer token")
        assert b"node-secret-token" not in data, data
        st, _, data = get(s, "/preview/pv-auth/8001/headers?mitos_token=" + tok, {"Authorization": "Basic dXNlcg=="})
        eq(json.loads(data)["headers"].get("authorization"), "Basic dXNlcg==", "the app's own Authorization")
        with open(os.path.join(state, "preview.key"), "rb") as f:
            key1 = f.read()
        s.stop(sig=9)
        s.proc.wait()
        s2 = Server(vmm, agent, token="node-secret-token", state_dir=state,
                    extra=["--preview-domain", DOMAIN, "--preview-paths"])
        try:
            with open(os.path.join(state, "preview.key"), "rb") as f:
                eq(f.read(), key1, "the key survives a restart")
            # Re-adoption reconnects to the agent after serve starts listening.
            wait_running(s2, "pv-auth")
            st, _, data = get(s2, "/preview/pv-auth/8001/headers?mitos_token=" + tok)
            eq(st, 200, "a URL minted before the restart")
        finally:
            s2.cleanup()
    finally:
        s.cleanup()
        if state:
            import shutil
            shutil.rmtree(state, ignore_errors=True)


def t_origin_per_sandbox(vmm, agent):
    """With a preview domain, each sandbox's previews have an origin of their own: the
    shared-origin path form is off (unless --preview-paths), and not offered; without a
    domain serve says at start that previews share one origin."""
    s = Server(vmm, agent, extra=["--preview-domain", DOMAIN])
    try:
        assert "one origin" not in "".join(s.stdout), s.stdout
        fork(s, "pv-origin")
        sh(s, "pv-origin", "mkdir -p /srv/o && cd /srv/o && echo own-origin > index.html && "
                           "(setsid python3 -m http.server 8002 --bind 127.0.0.1 >/dev/null 2>&1 </dev/null &) && "
                           "for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/8002) 2>/dev/null && break; "
                           "sleep 0.1; done")
        r = mint(s, sid="pv-origin", port=8002)
        assert "path_url" not in r and r["url"] == r["host_url"], r
        st, _, data = get(s, "/preview/pv-origin/8002/?mitos_token=" + r["token"])
        eq((st, error_code(data)), (404, "not_found"), "the path form")
        assert b"origin of their own" in data, data
        st, _, data = get(s, path_of(r["host_url"]), {"Host": "pv-origin-8002.%s:%d" % (DOMAIN, s.port)})
        eq((st, data), (200, b"own-origin\n"), "the host form")
    finally:
        s.stop()
        s.cleanup()
    s = Server(vmm, agent)
    try:
        assert "one origin" in "".join(s.stdout), s.stdout
    finally:
        s.stop()
        s.cleanup()


def t_relay_limit(s):
    """Whoever holds a preview URL may open connections through it: they take at most 192
    of the agent's 256 streams, so the sandbox's owner can still run commands."""
    sh(s, SID, "(setsid python3 -c 'import socket, time; l = socket.socket(); l.bind((\"127.0.0.1\", 8010)); "
               "l.listen(1024); time.sleep(600)' >/dev/null 2>&1 </dev/null &) && "
               "for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/8010) 2>/dev/null && break; sleep 0.1; done")
    path = path_of(mint(s, port=8010)["path_url"])
    held = []
    try:
        for _ in range(200):
            c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            c.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
            held.append(c)
        time.sleep(1)
        refused = 0
        for c in held:
            c.setblocking(False)
            try:
                refused += c.recv(4096).startswith(b"HTTP/1.1 429 ")
            except BlockingIOError:
                pass
        assert 8 <= refused <= 10, "relayed connections past the limit refused: %d of 200" % refused
        eq(sh(s, SID, "echo still-mine"), "still-mine\n", "the owner's command with the relays full")
        # Clients that leave while they wait give their relays back.
        for c in held:
            c.close()
        held = []
        time.sleep(0.5)
        for _ in range(150):
            c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            c.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
            held.append(c)
        time.sleep(1)
        for c in held:
            c.setblocking(False)
            try:
                got = c.recv(4096)
            except BlockingIOError:
                got = b""
            assert not got.startswith(b"HTTP/1.1 429 "), "a relay of a client that left was kept: %r" % got[:200]
    finally:
        for c in held:
            c.close()
    sh(s, SID, "pkill -f 'l.listen(1024)' || true")


def t_forward_relay_limit(s):
    """Port forwards are relays too: 4 forwards x 60 connections ask for 240 agent streams;
    past 192 in all a connection is closed at once, and the owner's command still runs."""
    sh(s, SID, "(setsid python3 -c 'import socket, time; l = socket.socket(); l.bind((\"127.0.0.1\", 8011)); "
               "l.listen(1024); time.sleep(600)' >/dev/null 2>&1 </dev/null &) && "
               "for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/8011) 2>/dev/null && break; sleep 0.1; done")
    ports = []
    for _ in range(4):
        st, r = s.request("POST", "/v1/sandboxes/%s/forward" % SID, {"guest_port": 8011})
        eq(st, 200, "forward (%r)" % (r,))
        ports.append(int(r["host"].rsplit(":", 1)[1]))
    held = []
    try:
        for port in ports:
            for _ in range(60):
                held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        time.sleep(1)
        closed = 0
        for c in held:
            c.setblocking(False)
            try:
                closed += c.recv(4096) == b""
            except BlockingIOError:
                pass
        assert 48 <= closed <= 60, "forwarded connections past the limit closed: %d of 240" % closed
        eq(sh(s, SID, "echo still-mine"), "still-mine\n", "the owner's command with the relays full")
    finally:
        for c in held:
            c.close()
    sh(s, SID, "pkill -f 'l.listen(1024)' || true")


def main():
    run = Runner()
    s = Server(VMM, AGENT, extra=["--preview-domain", DOMAIN, "--preview-paths"])
    tests = [("mint", t_mint), ("by_path", t_by_path), ("by_host", t_by_host), ("bad_tokens", t_bad_tokens),
             ("unknown_sandbox", t_unknown_sandbox), ("no_listener", t_no_listener), ("expose", t_expose),
             ("forward", t_forward),
             ("streaming", t_streaming),
             ("post", t_post), ("headers", t_headers), ("upstream_framing", t_upstream_framing), ("websocket", t_websocket), ("paused", t_paused),
             ("key", t_key), ("relay_limit", t_relay_limit), ("forward_relay_limit", t_forward_relay_limit)]
    try:
        run.run("setup", setup, s)
        if run.failed:
            raise SystemExit(run.finish())
        run.run_all(tests, ONLY, s)
    finally:
        run.stop_server(s)
    run.run_all([("token_server", t_token_server), ("origin_per_sandbox", t_origin_per_sandbox)], ONLY, VMM,
                AGENT)
    sys.exit(run.finish())


if __name__ == "__main__":
    main()
