"""A stand-in internet, and optionally a LAN, in network namespaces made for one run of
the egress suite or benchmark, so that the machine's own network, routes and firewall
are never touched:

  netns H (serve, its sandboxes, the calling script run again)
    up0  5.5.5.1/24, default route  ->  netns I ("internet"): 5.5.5.5, 1.1.1.1, 8.8.8.8
    lan0 10.99.0.1/24               ->  netns L ("LAN", lan=True): 10.99.0.2 (HTTP),
                                        10.99.0.53 (DNS)

I and L answer HTTP on port 80 with the address asked and the client's address, and I's
1.1.1.1 UDP on 7001 with a "tick" every 200 ms for 30 s to whoever says anything; L's DNS answers
NAME.test with 1.1.1.1 (one A record) and refuses other names."""
import os
import secrets
import subprocess
import sys
import time

DNS = "10.99.0.53"
_INSIDE = "MITOS_NETLAB_INSIDE"

STANDIN = r'''
import socket, struct, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        b = ("%s %s" % (self.connection.getsockname()[0], self.client_address[0])).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(b))); self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a): pass
def dns(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((addr, 53))
    while True:
        q, peer = s.recvfrom(512)
        i = 12; labels = []
        while q[i]:
            labels.append(q[i + 1:i + 1 + q[i]].decode()); i += 1 + q[i]
        qend = i + 5
        ok = labels and labels[-1] == "test"
        hdr = q[:2] + struct.pack(">HHHHH", 0x8180 if ok else 0x8183, 1, 1 if ok else 0, 0, 0)
        ans = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("1.1.1.1") if ok else b""
        s.sendto(hdr + q[12:qend] + ans, peer)
def ticker():
    # UDP 1.1.1.1:7001 (its own address, so that answers come from it): a client that
    # says anything gets "tick" 5 times a second for 30 s, as an outside sender keeps a
    # flow alive.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("1.1.1.1", 7001))
    except OSError:
        return
    def tick(peer):
        for _ in range(150):
            s.sendto(b"tick", peer); time.sleep(0.2)
    while True:
        _, peer = s.recvfrom(64)
        threading.Thread(target=tick, args=(peer,), daemon=True).start()
if len(sys.argv) > 1:
    threading.Thread(target=dns, args=(sys.argv[1],), daemon=True).start()
threading.Thread(target=ticker, daemon=True).start()
ThreadingHTTPServer(("0.0.0.0", 80), H).serve_forever()
'''


def inside():
    """True in the run of the calling script that run_in_lab started in H."""
    return bool(os.environ.get(_INSIDE))


def ip(*args, ns=None):
    subprocess.run(["ip"] + (["-n", ns] if ns else []) + list(args), check=True, capture_output=True)


def run_in_lab(prefix, lan=False):
    """Makes the namespaces (named PREFIX-h/i/l-<random>), runs this script again, with
    the same arguments, inside H, and removes everything after. Its exit code."""
    tag = secrets.token_hex(3)
    h, i, l = ("%s-%s-%s" % (prefix, x, tag) for x in "hil")
    spaces = (h, i, l) if lan else (h, i)
    servers = []
    try:
        for ns in spaces:
            ip("netns", "add", ns)
            ip("link", "set", "lo", "up", ns=ns)
        ip("link", "add", "up0", "netns", h, "type", "veth", "peer", "name", "wan0", "netns", i)
        addrs = [(h, "up0", "5.5.5.1/24"), (i, "wan0", "5.5.5.5/24"), (i, "lo", "1.1.1.1/32"),
                 (i, "lo", "8.8.8.8/32")]
        if lan:
            ip("link", "add", "lan0", "netns", h, "type", "veth", "peer", "name", "eth0", "netns", l)
            addrs += [(h, "lan0", "10.99.0.1/24"), (l, "eth0", "10.99.0.2/24"), (l, "eth0", DNS + "/24")]
        for ns, dev, addr in addrs:
            ip("addr", "add", addr, "dev", dev, ns=ns)
            ip("link", "set", dev, "up", ns=ns)
        ip("route", "add", "default", "via", "5.5.5.5", ns=h)
        for ns, dns in ((i, None), (l, DNS))[:len(spaces) - 1]:
            servers.append(subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", STANDIN]
                                            + ([dns] if dns else [])))
        time.sleep(0.5)
        env = dict(os.environ, **{_INSIDE: "1"})
        return subprocess.run(["ip", "netns", "exec", h, sys.executable] + sys.argv, env=env).returncode
    finally:
        for p in servers:
            p.kill()
            p.wait()
        for ns in spaces:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
