#!/usr/bin/env python3
"""Sandbox egress (serve --egress, api/engines/sandbox_net.c) against a stand-in
internet and LAN (netlab.py: serve runs in a network namespace of its own, H, with the
internet's 1.1.1.1 and 8.8.8.8 and a LAN with HTTP and DNS behind it, so the machine's
own network, routes and firewall are never touched; H runs a service of its own on
:9999). Checked: E2B's allowInternetAccess, allowOut and denyOut, at create and replaced
on a running sandbox (PUT /sandboxes/{id}/network), a Mitos template's egress and
allow_cidrs, on both engines (the kvm case boots the python image under the firmware
kernel, minutes where KVM only emulates); DNS; NAT; that H, the LAN (unless allowed),
other sandboxes and IPv6 stay out of reach and that nothing reaches a sandbox from
outside; its connection count and rate, and how long the host tracks its closed flows; forks, a restart of serve, cleanup of every interface, table and slot; the
refusals of what a node cannot honour.

usage: test_egress.py MITOS_VMM MITOS_AGENT [TEST-NAME-SUBSTRING...]
Exits 77 when not root or without ip and nft."""
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "pylib"))
import budget  # noqa: E402
import netlab  # noqa: E402
from mitos_test import Runner, Server, Skip, eq, exec_output, exit_of, wait_until  # noqa: E402

VMM, AGENT = sys.argv[1], sys.argv[2]
ONLY = sys.argv[3:]
# The form the E2B SDKs check before sending a key: "e2b_" and hex.
TOKEN = "e2b_" + secrets.token_hex(20)
E2B_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2b")
KEY = {"X-API-KEY": TOKEN}
DNS = netlab.DNS
HOST_PORT = 9999

# Run in a sandbox: every probe's answer, as JSON (at once: a refused one waits 2 s).
PROBE = r'''
import json, socket, threading, urllib.request
def get(u):
    try:
        return urllib.request.urlopen(u, timeout=2).read().decode()
    except Exception as e:
        return "ERR " + type(e).__name__
def tcp(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return "open"
    except Exception as e:
        return "ERR " + type(e).__name__
def name(n):
    try:
        return socket.gethostbyname(n)
    except Exception as e:
        return "ERR " + type(e).__name__
out = {}
def one(k, v):
    out[k] = get(v) if v.startswith("http") else name(v[5:]) if v.startswith("name:") else tcp(*v.split(":"))
ts = [threading.Thread(target=one, args=kv) for kv in TARGETS.items()]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps(out))
'''


def sh(s, sid, cmd, timeout=60):
    """(stdout, exit code) of cmd run by bash in sandbox sid."""
    out, msgs = exec_output(s, sid, {"command": cmd, "timeoutSeconds": timeout}, timeout=timeout + 10)
    end = exit_of(msgs)
    if end is None:
        raise AssertionError("no exit message: %r" % msgs)
    return out, end["exitCode"]


def probe(s, sid, **targets):
    code = PROBE.replace("TARGETS", repr(targets))
    out, rc = sh(s, sid, "python3 - <<'PYEOF'\n" + code + "\nPYEOF")
    eq(rc, 0, "probe ran (%r)" % out)
    return json.loads(out)


def addr_of(s, sid):
    """The sandbox's own IPv4 address (the source of its route out; a UDP connect sends
    nothing). The first 10.201 in fib_trie is its /30's network address, not its own."""
    out = sh(s, sid, "python3 -c \"import socket;u=socket.socket(2,2);u.connect(('1.1.1.1',9));"
                     "print(u.getsockname()[0])\"")[0].strip()
    assert out.startswith("10.201.") and not out.endswith(".0"), out
    return out


def ifaces(s, sid):
    out, _ = sh(s, sid, "ls /sys/class/net")
    return sorted(out.split())


def e2b_create(s, body=None):
    st, sb = s.request("POST", "/v2/sandboxes", dict({"templateID": "base"}, **(body or {})), headers=KEY)
    eq(st, 201, "E2B create (%r)" % (sb,))
    return sb["sandboxID"]


def e2b_refused(s, body, what):
    st, r = s.request("POST", "/v2/sandboxes", dict({"templateID": "base"}, **body), headers=KEY)
    eq(st, 400, "%s refused (%r)" % (what, r))
    return r["message"]


def egress_server(extra=(), state_dir=None):
    return Server(VMM, AGENT, extra=["--egress", "--dns", DNS] + list(extra), state_dir=state_dir, token=TOKEN)


def nft(*args):
    return subprocess.run(["nft"] + list(args), capture_output=True, text=True).stdout


def net_leftovers():
    """msb* interfaces and sandbox elements of the egress table in this namespace."""
    links = [x for x in os.listdir("/sys/class/net") if x.startswith("msb")]
    elements = [x for x in ("src", "internet", "allow", "deny")
                if "elements" in nft("list", "set", "inet", "mitos-egress", x)]
    return links + elements


def gone_clean(s):
    wait_until(lambda: not net_leftovers(), 10, "no sandbox interface or table left (%r)" % (net_leftovers(),))
    slots = os.path.join(s.state_dir, "net-slots")
    wait_until(lambda: not os.listdir(slots), 10, "every network slot freed")


def t_e2b_default_internet(s):
    """E2B's default: the internet, through NAT, names through the node's resolver; not
    this host, not the LAN, not IPv6."""
    sid = e2b_create(s)
    gw = sh(s, sid, "python3 -c \"import socket,struct;f=open('/proc/net/route').read().split('\\n')[1].split();"
            "print(socket.inet_ntoa(struct.pack('<I',int(f[2],16))))\"")[0].strip()
    assert gw.startswith("10.201."), gw
    r = probe(s, sid, gateway=f"{gw}:{HOST_PORT}", one="http://1.1.1.1/", eight="http://8.8.8.8/", name="name:svc.test",
              byname="http://svc.test/", lan="http://10.99.0.2/", host_up=f"5.5.5.1:{HOST_PORT}",
              host_lan=f"10.99.0.1:{HOST_PORT}", dns_host=f"{DNS}:80")
    eq(r["one"], "1.1.1.1 5.5.5.1", "1.1.1.1, seen from the host's address")
    eq(r["eight"], "8.8.8.8 5.5.5.1", "8.8.8.8")
    eq(r["name"], "1.1.1.1", "a name through the node's resolver")
    eq(r["byname"], "1.1.1.1 5.5.5.1", "by name")
    for k in ("gateway", "lan", "host_up", "host_lan", "dns_host"):
        assert r[k].startswith("ERR"), (k, r)
    eq(ifaces(s, sid), ["eth0", "lo"], "interfaces")
    out, _ = sh(s, sid, "cat /etc/resolv.conf; cat /proc/net/if_inet6 | wc -l")
    assert "nameserver %s" % DNS in out and out.rstrip().endswith("0"), out
    st, info = s.request("GET", "/sandboxes/" + sid, headers=KEY)
    eq((st, info["allowInternetAccess"], info["network"]), (200, True, {"allowPublicTraffic": True}), "getInfo")
    s.request("DELETE", "/sandboxes/" + sid, headers=KEY)
    gone_clean(s)


def t_e2b_no_internet(s):
    """allow_internet_access false: loopback only, as denyOut 0.0.0.0/0 is."""
    for body in ({"allow_internet_access": False}, {"network": {"denyOut": ["0.0.0.0/0"]}}):
        sid = e2b_create(s, body)
        eq(ifaces(s, sid), ["lo"], "interfaces of %r" % body)
        st, info = s.request("GET", "/sandboxes/" + sid, headers=KEY)
        eq((info["allowInternetAccess"], info["network"]), (False, {"denyOut": ["0.0.0.0/0"], "allowPublicTraffic": True}), "getInfo")
        s.request("DELETE", "/sandboxes/" + sid, headers=KEY)


def t_e2b_allow_deny(s):
    """denyOut closes what it names; allowOut opens what it names, private ranges too,
    and wins over denyOut, as on E2B."""
    sid = e2b_create(s, {"network": {"denyOut": ["8.8.8.8"]}})
    r = probe(s, sid, one="http://1.1.1.1/", eight="http://8.8.8.8/")
    assert r["one"].startswith("1.1.1.1") and r["eight"].startswith("ERR"), r
    sid2 = e2b_create(s, {"network": {"denyOut": ["0.0.0.0/0"], "allowOut": ["1.1.1.1"]}})
    r = probe(s, sid2, one="http://1.1.1.1/", eight="http://8.8.8.8/", name="name:x.test")
    assert r["one"].startswith("1.1.1.1") and r["eight"].startswith("ERR"), r
    eq(r["name"], "1.1.1.1", "DNS with everything else denied")
    st, info = s.request("GET", "/sandboxes/" + sid2, headers=KEY)
    eq(info["network"], {"allowOut": ["1.1.1.1/32"], "denyOut": ["0.0.0.0/0"], "allowPublicTraffic": True},
       "getInfo network")
    sid3 = e2b_create(s, {"allow_internet_access": False, "network": {"allowOut": ["10.99.0.0/24"]}})
    r = probe(s, sid3, lan="http://10.99.0.2/", one="http://1.1.1.1/", host=f"10.99.0.1:{HOST_PORT}")
    eq(r["lan"], "10.99.0.2 10.99.0.1", "the LAN, allowed")
    assert r["one"].startswith("ERR") and r["host"].startswith("ERR"), r
    for x in (sid, sid2, sid3):
        s.request("DELETE", "/sandboxes/" + x, headers=KEY)
    gone_clean(s)


def t_e2b_update(s):
    """PUT /sandboxes/{id}/network (the SDK's update_network) replaces the rules of a
    running sandbox whole: in force when it answers, {} back to the internet."""
    sid = e2b_create(s)

    def put(body):
        return s.request("PUT", "/sandboxes/%s/network" % sid, body, headers=KEY)[0]
    eq(put({"denyOut": ["8.8.8.8"]}), 204, "deny 8.8.8.8")
    r = probe(s, sid, one="http://1.1.1.1/", eight="http://8.8.8.8/")
    assert r["one"].startswith("1.1.1.1") and r["eight"].startswith("ERR"), r
    eq(s.request("GET", "/sandboxes/" + sid, headers=KEY)[1]["network"],
       {"denyOut": ["8.8.8.8/32"], "allowPublicTraffic": True}, "getInfo")
    eq(put({"allow_internet_access": False, "allowOut": ["10.99.0.2"]}), 204, "the LAN only")
    r = probe(s, sid, one="http://1.1.1.1/", lan="http://10.99.0.2/")
    assert r["one"].startswith("ERR") and r["lan"].startswith("10.99.0.2"), r
    eq(put({"allow_internet_access": False}), 204, "nothing")
    r = probe(s, sid, one="http://1.1.1.1/", name="name:a.test", lan="http://10.99.0.2/")
    assert all(v.startswith("ERR") for v in r.values()), r
    eq(s.request("GET", "/sandboxes/" + sid, headers=KEY)[1]["allowInternetAccess"], False, "getInfo")
    eq(put({}), 204, "cleared: E2B's default")
    r = probe(s, sid, one="http://1.1.1.1/", eight="http://8.8.8.8/")
    assert r["one"].startswith("1.1.1.1") and r["eight"].startswith("8.8.8.8"), r
    for body in ({"allowOut": ["pypi.org"]}, {"denyOut": "8.8.8.8"}, [1]):
        eq(put(body), 400, "bad body %r" % (body,))
    eq(s.request("PUT", "/sandboxes/sb-nope/network", {}, headers=KEY)[0], 404, "unknown sandbox")
    closed = e2b_create(s, {"allow_internet_access": False})
    st, r = s.request("PUT", "/sandboxes/%s/network" % closed, {}, headers=KEY)
    eq(st, 409, "a sandbox started without an interface gets none (%r)" % (r,))
    eq(s.request("PUT", "/sandboxes/%s/network" % closed, {"allow_internet_access": False}, headers=KEY)[0],
       204, "nothing stays nothing")
    for x in (sid, closed):
        s.request("DELETE", "/sandboxes/" + x, headers=KEY)
    gone_clean(s)
    eq([f for f in os.listdir(os.path.join(s.state_dir, "net-slots"))], [], "no update's files left")


def t_flows_forgotten(s):
    """A change of a sandbox's rules ends the flows the old ones let in: an outside
    sender that keeps a UDP flow alive (as long as it likes) reached the sandbox after
    updateNetwork forbade it, and would reach the next sandbox at a freed address."""
    sid = e2b_create(s)
    sh(s, sid, "cat > /tmp/ticks.py <<'PYEOF'\nimport socket\nu = socket.socket(2, 2)\nu.bind(('0.0.0.0', 40000))\n"
               "u.sendto(b'hi', ('1.1.1.1', 7001))\nwhile True:\n    u.recv(64)\n"
               "    open('/tmp/ticks', 'a').write('t')\nPYEOF\nnohup python3 /tmp/ticks.py >/dev/null 2>&1 &")
    wait_until(lambda: len(sh(s, sid, "cat /tmp/ticks 2>/dev/null")[0]) >= 3, 10, "ticks from 1.1.1.1")
    st, _ = s.request("PUT", "/sandboxes/%s/network" % sid, {"allow_internet_access": False}, headers=KEY)
    eq(st, 204, "updateNetwork")
    time.sleep(0.5)
    before = len(sh(s, sid, "cat /tmp/ticks")[0])
    time.sleep(1.5)
    after = len(sh(s, sid, "cat /tmp/ticks")[0])
    eq(after, before, "ticks after the sandbox's internet was taken away")
    s.request("DELETE", "/sandboxes/" + sid, headers=KEY)
    gone_clean(s)


def t_mitos_templates(s):
    """A Mitos template's network posture: echoed, and what its sandboxes get."""
    st, t = s.request("POST", "/v1/templates", {"id": "net-allow", "network": {"egress": "allow"}})
    eq((st, t["network"]), (200, {"egress": "allow", "inbound": "deny"}), "template")
    st, t = s.request("POST", "/v1/templates", {"id": "net-cidr", "network": {"allow_cidrs": ["8.8.8.0/24"]}})
    eq((st, t["network"]), (200, {"egress": "deny", "inbound": "deny", "allow_cidrs": ["8.8.8.0/24"]}), "cidrs")
    st, t = s.request("POST", "/v1/templates", {"id": "net-none"})
    eq((st, t["network"]), (200, {"egress": "deny", "inbound": "deny"}), "default")
    for sid, tpl in (("na", "net-allow"), ("nc", "net-cidr"), ("nn", "net-none")):
        st, sb = s.request("POST", "/v1/fork", {"template": tpl, "id": sid})
        eq(st, 200, "fork %s (%r)" % (tpl, sb))
    eq(s.request("GET", "/v1/sandboxes/na")[1]["network"]["egress"], "allow", "sandbox posture")
    r = probe(s, "na", one="http://1.1.1.1/", lan="http://10.99.0.2/")
    assert r["one"].startswith("1.1.1.1") and r["lan"].startswith("ERR"), r
    r = probe(s, "nc", one="http://1.1.1.1/", eight="http://8.8.8.8/")
    assert r["eight"].startswith("8.8.8.8") and r["one"].startswith("ERR"), r
    eq(ifaces(s, "nn"), ["lo"], "no network")
    # A fork of a sandbox keeps its network, with an address of its own.
    st, kids = s.request("POST", "/v1/sandboxes/na/fork", {"id": "na-kid"})
    eq(st, 200, "fork of a running sandbox (%r)" % (kids,))
    r = probe(s, "na-kid", one="http://1.1.1.1/")
    assert r["one"].startswith("1.1.1.1"), r
    addr = {x: addr_of(s, x) for x in ("na", "na-kid")}
    assert addr["na"] != addr["na-kid"], addr
    # A create of an existing template makes it anew, posture and all (as the
    # contract's server does): later forks get the new one, earlier sandboxes keep theirs.
    st, t = s.request("POST", "/v1/templates", {"id": "net-allow", "network": {"block": True}})
    eq((st, t["network"]), (200, {"egress": "deny", "inbound": "deny"}), "template made anew")
    eq(s.request("POST", "/v1/fork", {"template": "net-allow", "id": "na2"})[0], 200, "fork")
    eq(ifaces(s, "na2"), ["lo"], "the new posture")
    assert probe(s, "na", one="http://1.1.1.1/")["one"].startswith("1.1.1.1"), "an earlier sandbox keeps its own"
    st, t = s.request("POST", "/v1/templates", {"id": "net-none", "network": {"egress": "allow"}})
    eq(t["network"]["egress"], "allow", "and the other way")
    for x in ("na", "nc", "nn", "na-kid", "na2"):
        s.request("DELETE", "/v1/sandboxes/" + x)
    gone_clean(s)


def t_isolation(s):
    """Nothing reaches a sandbox from outside (another sandbox, this host); its root
    cannot change its address or routes; the host's table refuses a forged source."""
    a, b = e2b_create(s), e2b_create(s)
    sh(s, a, "nohup python3 -m http.server 8000 >/dev/null 2>&1 &")
    ip_a = addr_of(s, a)
    wait_until(lambda: probe(s, a, me=f"127.0.0.1:8000")["me"] == "open", 10, "the server in a")
    eq(probe(s, b, other=f"{ip_a}:8000")["other"][:3], "ERR", "sandbox to sandbox")
    c = socket.socket()
    c.settimeout(2)
    try:
        c.connect((ip_a, 8000))
        raise AssertionError("this host reached a sandbox's port")
    except OSError:
        pass
    finally:
        c.close()
    out, _ = sh(s, a, "python3 -c \"import fcntl,socket,struct;s=socket.socket();"
                "print(fcntl.ioctl(s,0x8916,struct.pack('16sH2s4s8s',b'eth0',2,b'',socket.inet_aton('1.1.1.9'),b'')))\""
                " 2>&1 | tail -1")
    assert "PermissionError" in out or "Operation not permitted" in out, out
    for x in (a, b):
        s.request("DELETE", "/sandboxes/" + x, headers=KEY)
    gone_clean(s)


def t_hostile_etc(s):
    """A sandbox that makes its /etc a link to a path of this host: its forks' resolv.conf
    is still written inside them (the link once resolved on the host, before the
    child's root was its own, and the child's start wrote the host's file)."""
    canary = tempfile.mkdtemp(prefix="mte-canary-", dir="/tmp")
    try:
        st, t = s.request("POST", "/v1/templates", {"id": "net-h", "network": {"egress": "allow"}})
        eq(st, 200, "template")
        eq(s.request("POST", "/v1/fork", {"template": "net-h", "id": "evil"})[0], 200, "fork")
        out, rc = sh(s, "evil", f"mv /etc /etc.orig && ln -s {canary} /etc && ls -ld /etc")
        eq(rc, 0, "the link (%r)" % out)
        st, r = s.request("POST", "/v1/sandboxes/evil/fork", {"id": "evil-kid"})
        eq(os.listdir(canary), [], "nothing written on the host (fork answered %d)" % st)
        for x in ("evil", "evil-kid"):
            s.request("DELETE", "/v1/sandboxes/" + x)
        gone_clean(s)
    finally:
        shutil.rmtree(canary, ignore_errors=True)


def t_npm_e2b_sdk(s):
    """The unmodified npm e2b SDK's network options (tests/e2b/egress_sdk.mjs)."""
    if not shutil.which("node") or not os.path.isdir(os.path.join(E2B_DIR, "node_modules", "e2b")):
        raise Skip("needs node and tools/setup's npm ci in tests/e2b")
    url = "http://127.0.0.1:%d" % s.port
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2B_")}
    env.update(E2B_API_URL=url, E2B_SANDBOX_URL=url, E2B_API_KEY=TOKEN)
    p = subprocess.run(["node", "--test", "--test-concurrency=1", "egress_sdk.mjs"], cwd=E2B_DIR, env=env,
                       capture_output=True, text=True, timeout=300)
    if p.returncode:
        raise AssertionError("egress_sdk.mjs failed:\n" + p.stdout[-6000:] + p.stderr[-2000:])
    gone_clean(s)


def t_conn_limit(_s):
    """--egress-conns: a sandbox's open connections through this host are capped (its
    conntrack entries: one tenant cannot fill the host's table); closed ones free their
    place."""
    s = egress_server(["--egress-conns", "16"])
    try:
        sid = e2b_create(s)
        out, rc = sh(s, sid, "python3 - <<'PYEOF'\n"
                     "import socket, time\n"
                     "held = []\n"
                     "for i in range(40):\n"
                     "    try:\n"
                     "        held.append(socket.create_connection(('1.1.1.1', 80), timeout=0.3))\n"
                     "    except OSError:\n"
                     "        pass\n"
                     "print(len(held))\n"
                     "for c in held:\n"
                     "    c.close()\n"
                     "time.sleep(0.5)\n"
                     "socket.create_connection(('1.1.1.1', 80), timeout=2).close()\n"
                     "print('again')\n"
                     "PYEOF")
        n, again = out.split()
        assert 12 <= int(n) <= 16 and again == "again", out
        s.request("DELETE", "/sandboxes/" + sid, headers=KEY)
        gone_clean(s)
    finally:
        s.cleanup()


def t_conn_rate(_s):
    """--egress-rate: a sandbox's new connections (UDP flows too) per second are capped,
    as many at once; and the host forgets its closed flows soon (TCP's TIME_WAIT
    and unanswered UDP after 10 s, not minutes): a sandbox that opens and closes
    connections fast holds a bounded part of the host's conntrack table."""
    s = egress_server(["--egress-rate", "20"])
    try:
        sid = e2b_create(s)
        # 120 connects at once to a port nothing listens on: 20 SYNs pass and are
        # refused (up to 40 on kernels whose bucket holds the rate and the burst), the rest are dropped (and retried by the sandbox's kernel after a
        # second, so counted before that).
        out, rc = sh(s, sid, "python3 - <<'PYEOF'\n"
                     "import errno, socket, time\n"
                     "socks = []\n"
                     "for i in range(120):\n"
                     "    c = socket.socket()\n"
                     "    c.setblocking(False)\n"
                     "    c.connect_ex(('1.1.1.1', 81))\n"
                     "    socks.append(c)\n"
                     "time.sleep(0.8)\n"
                     "print(sum(c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED for c in socks))\n"
                     "PYEOF")
        assert 18 <= int(out) <= 42, out
        time.sleep(2.5)  # the bucket fills again
        addr = addr_of(s, sid)
        out, rc = sh(s, sid, "curl -sS --max-time 5 http://1.1.1.1/ && python3 -c \"import socket;"
                     "socket.socket(2, 2).sendto(b'x', ('1.1.1.1', 9))\"")
        eq(rc, 0, "a connection and a datagram (%r)" % out)
        flows = subprocess.run(["conntrack", "-L", "-s", addr], capture_output=True, text=True).stdout.splitlines()
        tw = [f for f in flows if " TIME_WAIT " in f]
        udp = [f for f in flows if f.startswith("udp") and "dport=9 " in f]
        assert tw and udp, flows
        for f in tw + udp:
            assert int(f.split()[2]) <= 10, f
        s.request("DELETE", "/sandboxes/" + sid, headers=KEY)
        gone_clean(s)
    finally:
        s.cleanup()


def t_kvm_linux_guest(_s):
    """The kvm engine: a template built on an --egress serve has a network device and
    its guest an address (mitos.net); each sandbox's VM gets a TAP in a network
    namespace of its own, paired with this host when its policy lets anything out
    (nothing reaches it otherwise), and updateNetwork replaces its rules. The python
    image under the firmware kernel (minutes where KVM only emulates)."""
    cache = os.environ.get("MITOS_CACHE") or os.path.join(os.environ["HOME"], ".cache", "mitos")
    kernel = os.path.join(cache, "kernel", "current-pvm" if budget.emulated(VMM) else "current", "vmlinux")
    disk = os.path.join(cache, "images", "current-python", "rootfs.ext4")
    if not os.path.exists("/dev/kvm") or not os.path.exists(kernel) or not os.path.exists(disk):
        raise Skip("needs /dev/kvm, the python image and the firmware kernel (tools/build-guests)")
    s = egress_server(["--engine", "kvm", "--kvm-pool", "1", "--images", os.path.join(cache, "images")])
    try:
        wait = budget.seconds(VMM, 10, budget.TEMPLATE_MINSTR)
        t0 = time.time()
        for attempt in (1, 2):
            c = s.conn(timeout=wait)
            c.request("POST", "/v1/templates", body=json.dumps({"id": "base"}),
                      headers=s.headers({"Content-Type": "application/json"}))
            try:
                r = c.getresponse()
                break
            except http.client.RemoteDisconnected:
                # A known, rare drop of a template request that waits minutes for its
                # build (seen twice, not yet explained: see the notes): said loudly,
                # with what serve said, then asked again (the build goes on and a
                # second create waits for it). A serve that died fails here.
                print("NOTE: serve closed the template request after %.0f s without an answer (serve %s); "
                      "its stderr:\n%s" % (time.time() - t0, "runs" if s.proc.poll() is None else
                                            "exited with %s" % s.proc.poll(), s.stderr()[-4000:]), flush=True)
                if attempt == 2 or s.proc.poll() is not None:
                    raise
        eq(r.status, 200, "the template (%r)" % r.read()[:300])
        c.close()
        slow = int(budget.seconds(VMM, 10, 30))
        sid = e2b_create(s)

        def curl(x, url):
            out, rc = sh(s, x, "curl -sS --max-time 5 %s || echo refused" % url, timeout=slow)
            return out.strip()
        eq(curl(sid, "http://1.1.1.1/"), "1.1.1.1 5.5.5.1", "the internet, masqueraded twice")
        eq(curl(sid, "http://svc.test/"), "1.1.1.1 5.5.5.1", "a name through the node's resolver")
        eq(curl(sid, "http://10.99.0.2/"), "refused", "the LAN")
        closed = e2b_create(s, {"allow_internet_access": False})
        eq(curl(closed, "http://1.1.1.1/"), "refused", "a VM allowed nothing")
        eq(s.request("PUT", "/sandboxes/%s/network" % sid, {"denyOut": ["1.1.1.1"]}, headers=KEY)[0], 204, "update")
        eq(curl(sid, "http://1.1.1.1/"), "refused", "denied now")
        eq(curl(sid, "http://8.8.8.8/"), "8.8.8.8 5.5.5.1", "the rest still open")
        for x in (sid, closed):
            s.request("DELETE", "/sandboxes/" + x, headers=KEY)
        gone_clean(s)
    except Exception as ex:
        # What serve said (and whether it still runs) is the first thing to know.
        raise AssertionError("%s: %s\n--- serve %s; its stderr ---\n%s" % (
            type(ex).__name__, ex, "runs" if s.proc.poll() is None else "exited with %s" % s.proc.poll(),
            s.stderr()[-6000:])) from ex
    finally:
        s.cleanup()


def t_kvm_template_before_egress(_s):
    """A kvm template built by a serve without --egress has no network device: a later
    --egress serve reports E2B's default internet as not given for it and refuses an
    allowlist or a Mitos egress allow with the way out (make it anew). The test guest
    stands in for the guest (its agent mode answers the agent's hello)."""
    guest, mkdisk = os.environ.get("MITOS_TESTGUEST"), os.environ.get("MITOS_TESTGUEST_MKDISK")
    if not os.path.exists("/dev/kvm") or not guest or not mkdisk:
        raise Skip("needs /dev/kvm and the test guest (MITOS_TESTGUEST, MITOS_TESTGUEST_MKDISK)")
    state = tempfile.mkdtemp(prefix="mte-kvm-", dir="/var/tmp")
    disk = state + ".img"
    subprocess.check_call([mkdisk, disk, "64"])
    os.chmod(disk, 0o600)
    kvm = ["--engine", "kvm", "--kvm-pool", "0"]
    servers = [Server(VMM, AGENT, extra=kvm, state_dir=state, token=TOKEN)]
    try:
        st, r = servers[0].request("POST", "/v1/templates", {
            "id": "plain", "kernel": guest, "rootfs": disk, "cmdline": "testguest.mode=agent", "mem_mib": 32})
        eq(st, 200, "the template, without --egress (%r)" % (r,))
        servers[0].stop()
        servers.append(egress_server(kvm, state_dir=state))
        s = servers[1]
        st, sb = s.request("POST", "/v2/sandboxes", {"templateID": "plain"}, headers=KEY)
        eq(st, 201, "E2B's default on it (%r)" % (sb,))
        st, info = s.request("GET", "/sandboxes/" + sb["sandboxID"], headers=KEY)
        eq(info["allowInternetAccess"], False, "reported as not given")
        st, r = s.request("POST", "/v2/sandboxes", {"templateID": "plain", "network": {"allowOut": ["1.1.1.1"]}},
                          headers=KEY)
        eq(st, 400, "an allowlist (%r)" % (r,))
        assert "anew" in r["message"], r
        st, r = s.request("POST", "/v1/templates", {"id": "plain", "network": {"egress": "allow"}})
        eq(st, 400, "a Mitos egress allow (%r)" % (r,))
        assert "network device" in r["error"]["message"], r
    finally:
        for x in servers:
            x.cleanup()
        shutil.rmtree(state, ignore_errors=True)
        os.unlink(disk)


def t_restart(s):
    """A sandbox keeps its network across a restart of serve; the next serve releases it."""
    sid = e2b_create(s)
    state = s.state_dir
    s.stop(signal.SIGKILL)
    s2 = egress_server(state_dir=state)
    try:
        wait_until(lambda: s2.request("GET", "/sandboxes/" + sid, headers=KEY)[0] == 200, 10, "re-adopted")
        r = probe(s2, sid, one="http://1.1.1.1/")
        assert r["one"].startswith("1.1.1.1"), r
        st, info = s2.request("GET", "/sandboxes/" + sid, headers=KEY)
        eq(info["allowInternetAccess"], True, "getInfo after a restart")
        s2.request("DELETE", "/sandboxes/" + sid, headers=KEY)
        gone_clean(s2)
    finally:
        s2.cleanup()


def t_refusals(s):
    """What a node cannot honour is a 400, never silently ignored."""
    for body, what in (({"network": {"allowOut": ["example.com"]}}, "a host name"),
                       ({"network": {"allowOut": ["::1"]}}, "IPv6"),
                       ({"network": {"denyOut": ["1.2.3.4/33"]}}, "a bad prefix"),
                       ({"network": {"allowOut": ["01.2.3.4"]}}, "an octal-looking address"),
                       ({"network": {"allowOut": ["1.1.1.%d" % i for i in range(65)]}}, "65 entries"),
                       ({"network": {"rules": {"x.com": [{"transform": {"headers": {"a": "b"}}}]}}}, "transforms"),
                       ({"network": "all"}, "a string"),
                       ({"allow_internet_access": "yes"}, "a string allow_internet_access")):
        e2b_refused(s, body, what)
    for net in ({"inbound": "allow"}, {"allow_domains": ["pypi.org"]}, {"allow_cidrs": ["x"]},
                {"egress": "maybe"}):
        st, r = s.request("POST", "/v1/templates", {"id": "bad-net", "network": net})
        eq(st, 400, "template network %r (%r)" % (net, r))


def t_stop_removes_table(_s):
    """A serve with --egress that stops leaves no table behind once no sandbox needs it."""
    s = egress_server()
    try:
        sid = e2b_create(s)
        assert "mitos-egress" in nft("list", "tables"), "the table while serve runs"
        eq(s.stop(), 0, "a graceful stop")
        eq(nft("list", "tables").count("mitos-egress"), 0, "no table after it")
        assert not net_leftovers(), net_leftovers()
    finally:
        s.cleanup()


def t_without_egress(_s):
    """Without --egress: E2B's default internet is reported as not given, an allowlist
    or a Mitos egress allow is refused, and sandboxes have loopback only."""
    s = Server(VMM, AGENT, token=TOKEN)
    try:
        eq(s.request("GET", "/v1/health")[0], 200, "serve up")
        sid = e2b_create(s)
        eq(ifaces(s, sid), ["lo"], "loopback only")
        st, info = s.request("GET", "/sandboxes/" + sid, headers=KEY)
        eq(info["allowInternetAccess"], False, "reported as it is")
        why = e2b_refused(s, {"network": {"allowOut": ["1.1.1.1"]}}, "an allowlist")
        assert "--egress" in why, why
        st, r = s.request("POST", "/v1/templates", {"id": "net", "network": {"egress": "allow"}})
        eq(st, 400, "egress allow (%r)" % (r,))
        assert "--egress" in r["error"]["message"], r
        assert "mitos-egress" not in nft("list", "tables"), "a serve without --egress and no sandbox " \
            "needing it leaves no table"
    finally:
        s.cleanup()


def host_service():
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", HOST_PORT))
    ls.listen(16)

    def loop():
        while True:
            c, _ = ls.accept()
            c.close()
    threading.Thread(target=loop, daemon=True).start()


def inside():
    host_service()
    r = Runner()
    for name, fn in (("e2b_default_internet", t_e2b_default_internet), ("e2b_no_internet", t_e2b_no_internet),
                     ("e2b_allow_deny", t_e2b_allow_deny), ("e2b_update", t_e2b_update),
                     ("flows_forgotten", t_flows_forgotten),
                     ("mitos_templates", t_mitos_templates),
                     ("npm_e2b_sdk", t_npm_e2b_sdk), ("isolation", t_isolation), ("hostile_etc", t_hostile_etc),
                     ("refusals", t_refusals), ("conn_limit", t_conn_limit), ("conn_rate", t_conn_rate),
                     ("restart", t_restart), ("stop_removes_table", t_stop_removes_table),
                     ("kvm_template_before_egress", t_kvm_template_before_egress),
                     ("kvm_linux_guest", t_kvm_linux_guest),
                     ("without_egress", t_without_egress)):
        if ONLY and not any(o in name for o in ONLY):
            continue
        own = ("without_egress", "conn_limit", "conn_rate", "stop_removes_table", "kvm_template_before_egress",
               "kvm_linux_guest")
        s = egress_server() if name not in own else None
        try:
            r.run(name, fn, s)
        finally:
            # A serve that does not exit 0 (a sanitizer's report) fails the suite;
            # restart's was killed on purpose.
            if s and s.proc.poll() is None:
                r.stop_server(s)
            elif s:
                s.cleanup()
    return r.finish()


def main():
    if netlab.inside():
        return inside()
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nft"):
        print("SKIP: needs root, ip (iproute2) and nft (nftables)")
        return 77
    return netlab.run_in_lab("mte", lan=True)


if __name__ == "__main__":
    sys.exit(main())
