#!/usr/bin/env python3
"""A sample client of a running `mitos-vmm serve`, with nothing but the Python
standard library: it creates a sandbox from the python template, runs a command,
writes and reads a file, runs Python code that draws a matplotlib plot (saved to
a PNG here), serves a page from inside the sandbox through a preview URL, and
deletes the sandbox. The wire format is in api/API.md.

usage: tools/sample.py [--url http://127.0.0.1:8080] [--token-file FILE] [--out ./sample-plot.png]"""
import argparse
import base64
import http.client
import json
import os
import struct
import sys
import time
import urllib.parse


class ApiError(Exception):
    def __init__(self, status, err):
        self.status, self.err = status, err
        super().__init__("%s (HTTP %d): %s" % (err.get("code"), status, err.get("message")))


class Client:
    def __init__(self, url, token=None):
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname, u.port or 80
        self.token = token

    def _send(self, method, path, body=None, headers=None):
        h = dict(headers or {})
        if self.token:
            h["Authorization"] = "Bearer " + self.token
        c = http.client.HTTPConnection(self.host, self.port, timeout=120)
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data

    def rest(self, method, path, obj=None):
        st, data = self._send(method, path, json.dumps(obj) if obj is not None else None,
                              {"Content-Type": "application/json"})
        out = json.loads(data) if data else {}
        if st >= 400:
            raise ApiError(st, out.get("error", {}))
        return out

    def stream(self, sid, method, *msgs):
        """A Connect stream (server or client): the request messages in, the answer's
        messages out, then the end-of-stream error if any."""
        body = b"".join(struct.pack(">BI", 0, len(m)) + m for m in (json.dumps(x).encode() for x in msgs))
        st, data = self._send("POST", "/sandbox.v1.Sandbox/" + method, body,
                              {"Content-Type": "application/connect+json", "X-Sandbox-Id": sid})
        if st >= 400:
            raise ApiError(st, json.loads(data).get("error", {}))
        msgs, i = [], 0
        while i + 5 <= len(data):
            flags, n = struct.unpack(">BI", data[i:i + 5])
            m = json.loads(data[i + 5:i + 5 + n])
            i += 5 + n
            if flags & 2:
                if "error" in m:
                    e = m["error"]
                    raise ApiError(200, {"code": e.get("mitos_code", e.get("code")), "message": e.get("message"),
                                         "remediation": e.get("remediation")})
                break
            msgs.append(m)
        return msgs


def step(title):
    print("== " + title, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default=os.environ.get("MITOS_BASE_URL", "http://127.0.0.1:8080"))
    ap.add_argument("--token-file", help="file holding serve's bearer token")
    ap.add_argument("--out", default="./sample-plot.png", help="where to save the plot")
    a = ap.parse_args()
    token = open(a.token_file).read().strip() if a.token_file else os.environ.get("MITOS_API_KEY")
    api = Client(a.url, token)
    sid = None
    try:
        health = api.rest("GET", "/v1/health")
        step("serve at %s runs the %s engine" % (a.url, health["engine"]))

        t0 = time.time()
        api.rest("POST", "/v1/templates", {"id": "python"})
        sb = api.rest("POST", "/v1/fork", {"template": "python", "id": "sample-%d" % os.getpid()})
        sid = sb["id"]
        step("sandbox %s from template python ready in %.0f ms (fork %.1f ms)" % (sid, (time.time() - t0) * 1000,
                                                                                 sb["fork_time_ms"]))

        step("exec")
        msgs = api.stream(sid, "ExecStream", {"command": "echo \"hello from $(hostname)\"; python3 --version; "
                                                         "grep PRETTY_NAME /etc/os-release"})
        sys.stdout.write("".join(base64.b64decode(m["stdout"]).decode() for m in msgs if "stdout" in m))
        end = [m["exit"] for m in msgs if "exit" in m][0]
        print("exit code %d" % end.get("exitCode", 0))

        step("write and read /workspace/notes.md")
        text = "# findings\nwritten by tools/sample.py at %s\n" % time.strftime("%H:%M:%S")
        api.stream(sid, "WriteFile", {"open": {"path": "/workspace/notes.md"}},
                   {"data": base64.b64encode(text.encode()).decode()})
        got = b"".join(base64.b64decode(m["data"]) for m in api.stream(sid, "ReadFile", {"path": "/workspace/notes.md"})
                       if "data" in m).decode()
        sys.stdout.write(got)
        assert got == text, "read back something else"

        step("run_code: a matplotlib plot")
        code = ("import numpy as np, matplotlib.pyplot as plt\n"
                "x = np.linspace(0, 4 * np.pi, 400)\n"
                "fig, ax = plt.subplots(figsize=(6, 3.5))\n"
                "ax.plot(x, np.sin(x), label='sin'); ax.plot(x, np.cos(x), label='cos')\n"
                "ax.set_title('drawn in a Mitos sandbox'); ax.legend()\n"
                "print('numpy', np.__version__)\n")
        msgs = api.stream(sid, "RunCodeStream", {"code": code})
        for m in msgs:
            if "stdout" in m:
                sys.stdout.write(base64.b64decode(m["stdout"]).decode())
            if "error" in m:
                raise SystemExit("the code failed: %s: %s" % (m["error"]["name"], m["error"]["value"]))
        pngs = [m["result"]["data"]["image/png"] for m in msgs if "result" in m and "image/png" in m["result"]["data"]]
        if not pngs:
            raise SystemExit("run_code returned no image/png")
        with open(a.out, "wb") as f:
            # A MIME value is the kernel's text as protojson bytes: base64 of the PNG's base64.
            f.write(base64.b64decode(base64.b64decode(pngs[0])))
        print("plot saved to %s" % os.path.abspath(a.out))

        step("preview: a web server inside the sandbox")
        api.stream(sid, "ExecStream", {"command": "mkdir -p /tmp/site && echo 'hello through the preview proxy' "
                                                  "> /tmp/site/index.html && cd /tmp/site && "
                                                  "(setsid python3 -m http.server 8000 >/dev/null 2>&1 </dev/null &) && "
                                                  "for i in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/8000) "
                                                  "2>/dev/null && break; sleep 0.1; done"})
        pv = api.rest("POST", "/v1/preview", {"sandbox": sid, "port": 8000, "ttl": 600})
        u = urllib.parse.urlsplit(pv["path_url"])
        st, page = api._send("GET", u.path + "?" + u.query)
        print("GET %s -> %d %s" % (pv["path_url"].split("?")[0] + "?mitos_token=...", st, page.decode().strip()))
    except ApiError as e:
        print("error: %s\n  cause: %s\n  remediation: %s" % (e, e.err.get("cause"), e.err.get("remediation")),
              file=sys.stderr)
        return 1
    except OSError as e:
        print("error: cannot reach serve at %s: %s" % (a.url, e), file=sys.stderr)
        return 1
    finally:
        if sid:
            try:
                api.rest("DELETE", "/v1/sandboxes/" + sid)
                step("sandbox %s deleted" % sid)
            except (ApiError, OSError) as e:
                print("could not delete %s: %s" % (sid, e), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
