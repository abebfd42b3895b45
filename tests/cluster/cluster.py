"""A Mitos cluster on one machine, for the cluster suite and tools/bench-cluster:
N `mitos-vmm serve` nodes, each in a network namespace of its own (reached over a
veth pair), behind a real HAProxy configured by tools/cluster-config. Every name it
creates (namespaces, veths, a bridge, the 10.201.X.0/24 subnet, the work dir) is unique to this
process and removed by close(). Needs root. Stdlib only."""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "api"))
from mitos_test import Server, envelope, parse_envelopes as envelopes  # noqa: E402,F401 (re-exported)
NODE_PORT = 8080
PREVIEW_DOMAIN = "preview.test"
E2B_DOMAIN = "e2b.test"


def sh(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def free_subnet():
    """A 10.201.X.0/24 no interface of this host uses (other runs may hold some)."""
    used = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    start = os.getpid() % 250
    for k in range(250):
        x = (start + k) % 250 + 1
        if "10.201.%d." % x not in used:
            return x
    raise RuntimeError("no free 10.201.X.0/24 subnet")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Endpoint(Server):
    """HTTP to one address (a node or the router), with the cluster's token: the API
    suites' client, pointed elsewhere than a serve it started."""

    def __init__(self, host, port, token):  # pylint: disable=super-init-not-called
        self.host, self.port, self.token = host, port, token

    def conn(self, timeout=60):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request_full(self, method, path, body=None, headers=None):
        """(status, decoded JSON body, response) for checks of headers."""
        st, r, data = self.request(method, path, body, headers, raw=True)
        return st, json.loads(data) if data else None, r

    # Not Server.stream: a node that is down answers with JSON, not envelopes.
    def stream(self, method, sid, msg, timeout=60):
        c = self.conn(timeout)
        c.request("POST", "/sandbox.v1.Sandbox/" + method, body=envelope(msg),
                  headers=self.headers({"Content-Type": "application/connect+json", "X-Sandbox-Id": sid}))
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, r.getheader("Content-Type"), data


def created_ids(resp):
    """Sandbox ids of a fork answer, whatever its shape ({"sandboxes": [...]}, {"id"}, [...])."""
    if isinstance(resp, dict) and isinstance(resp.get("sandboxes"), list):
        resp = resp["sandboxes"]
    if isinstance(resp, dict):
        resp = [resp]
    return [s["id"] for s in resp if isinstance(s, dict) and "id" in s]


def listed(resp):
    """The sandboxes of a list answer ({"sandboxes": [...]} or a bare array)."""
    if isinstance(resp, dict):
        resp = resp.get("sandboxes")
    return resp if isinstance(resp, list) else []


def node_of(sid):
    return sid.rsplit("-", 1)[-1]


class Node:
    def __init__(self, cluster, index):
        self.cluster, self.tag = cluster, "n%d" % index
        self.ns = "mitos-%s-%s" % (cluster.prefix, self.tag)
        self.veth = "%sh%d" % (cluster.prefix, index)
        self.ip = "10.201.%d.%d" % (cluster.subnet, 10 + index)
        self.state_dir = os.path.join(cluster.dir, "state-" + self.tag)
        self.log_path = os.path.join(cluster.dir, "serve-%s.log" % self.tag)
        self.proc = None
        sh("ip", "netns", "add", self.ns)
        cluster.namespaces.append(self.ns)
        sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        sh("ip", "link", "set", self.veth, "master", cluster.bridge, "up")
        sh("ip", "-n", self.ns, "addr", "add", self.ip + "/24", "dev", "eth0")
        sh("ip", "-n", self.ns, "link", "set", "eth0", "up")
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        self.api = Endpoint(self.ip, NODE_PORT, cluster.token)

    def start(self, extra=()):
        c = self.cluster
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            # nsenter, not `ip netns exec`: that one mounts a fresh /sys without the
            # cgroup hierarchy, and a node's sandboxes need their cgroups.
            ["nsenter", "--net=/run/netns/" + self.ns, "--", c.vmm, "serve", "--listen", "%s:%d" % (self.ip, NODE_PORT),
             "--state-dir", self.state_dir, "--agent", c.agent, "--engine", "process", "--images", "none",
             "--node-id", self.tag,
             "--peers", c.nodes_file, "--token-file", c.token_file,
             "--preview-domain", PREVIEW_DOMAIN, "--preview-paths"] + list(extra),
            stdout=subprocess.PIPE, stderr=log)
        log.close()
        self.stdout = []
        deadline = time.time() + 30
        while time.time() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            self.stdout.append(line)
            if line.startswith("listening on http://"):
                return
        raise RuntimeError("node %s did not start: %s\n%s" % (self.tag, "".join(self.stdout), self.log()))

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def kill(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None


class Cluster:
    def __init__(self, vmm, agent, n=3, token="cluster-test-token-0123456789"):
        self.vmm, self.agent, self.token = vmm, agent, token
        self.prefix = "mc%d" % (os.getpid() % 100000)
        self.namespaces, self.nodes, self.haproxy, self.made_bridge = [], [], None, False
        self.dir = tempfile.mkdtemp(prefix="mitos-cluster-", dir="/var/tmp")
        try:
            self.subnet = free_subnet()
            self.token_file = os.path.join(self.dir, "token")
            with open(self.token_file, "w") as f:
                f.write(token + "\n")
            os.chmod(self.token_file, 0o600)
            self.nodes_file = os.path.join(self.dir, "nodes")
            # One bridge joins the nodes (they list each other) and the host (the router).
            self.bridge = self.prefix + "br"
            sh("ip", "link", "add", self.bridge, "type", "bridge")
            self.made_bridge = True
            sh("ip", "addr", "add", "10.201.%d.1/24" % self.subnet, "dev", self.bridge)
            sh("ip", "link", "set", self.bridge, "up")
            self.nodes = [Node(self, i + 1) for i in range(n)]
            with open(self.nodes_file, "w") as f:
                for nd in self.nodes:
                    f.write("%s %s:%d\n" % (nd.tag, nd.ip, NODE_PORT))
            for nd in self.nodes:
                nd.start()
            self.port = free_port()
            self.stats = os.path.join(self.dir, "haproxy.sock")
            self.cfg = os.path.join(self.dir, "haproxy.cfg")
            subprocess.run([os.path.join(ROOT, "tools", "cluster-config"), "--nodes", self.nodes_file,
                            "--listen", "127.0.0.1:%d" % self.port, "--token-file", self.token_file,
                            "--stats-socket", self.stats, "--preview-domain", PREVIEW_DOMAIN,
                            "--e2b-domain", E2B_DOMAIN, "--out", self.cfg], check=True)
            self.haproxy_log = open(os.path.join(self.dir, "haproxy.log"), "ab")
            self.haproxy = subprocess.Popen(["haproxy", "-db", "-f", self.cfg], stdout=self.haproxy_log,
                                            stderr=subprocess.STDOUT)
            self.router = Endpoint("127.0.0.1", self.port, token)
            self.wait(lambda: all(st == "UP" for st in self.server_states().values())
                      and all(self.server_states().get(("node_" + nd.tag, nd.tag)) == "UP" for nd in self.nodes),
                      20, "every router backend UP")
        except BaseException:
            sys.stderr.write(self.logs() + "\n")
            self.close()
            raise

    def node(self, tag):
        return next(nd for nd in self.nodes if nd.tag == tag)

    def server_states(self):
        """{(backend, server): status} from HAProxy's admin socket ("UP", "DOWN", ...)."""
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(self.stats)
            s.sendall(b"show stat\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
        except OSError:
            return {}
        out = {}
        lines = data.decode().splitlines()
        if not lines:
            return out
        cols = lines[0].lstrip("# ").split(",")
        for line in lines[1:]:
            f = dict(zip(cols, line.split(",")))
            if f.get("svname") not in (None, "FRONTEND", "BACKEND"):
                out[(f["pxname"], f["svname"])] = f.get("status", "").split(" ")[0]
        return out

    @staticmethod
    def wait(pred, timeout, what):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if pred():
                return
            time.sleep(0.1)
        raise AssertionError("timed out waiting for " + what)

    def logs(self):
        out = []
        for nd in self.nodes:
            out.append("---- serve %s\n%s" % (nd.tag, nd.log()[-3000:]))
        path = os.path.join(self.dir, "haproxy.log")
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                out.append("---- haproxy\n" + f.read()[-3000:])
        out.append("---- router servers: %r" % (self.server_states(),))
        return "\n".join(out)

    def close(self):
        for nd in self.nodes:
            nd.stop()
            # A node killed and never restarted left its sandboxes running: a node
            # started on its state takes them over, and stopping it removes them.
            if nd.proc and nd.proc.returncode not in (0, None) and os.listdir(
                    os.path.join(nd.state_dir, "sandboxes")):
                try:
                    nd.start()
                    nd.stop()
                except (OSError, RuntimeError):
                    pass
        if self.haproxy and self.haproxy.poll() is None:
            self.haproxy.terminate()
            try:
                self.haproxy.wait(10)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()
                self.haproxy.wait()
        for ns in self.namespaces:
            # The host end of the veth pair goes with its peer.
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        if self.made_bridge:
            subprocess.run(["ip", "link", "del", self.bridge], stderr=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)

