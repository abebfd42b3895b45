#!/usr/bin/env python3
"""KVM integration: virtio-net through a TAP in namespaces made by tools/netns-sandbox.

usage: test_net.py MITOS_VMM TESTGUEST_ELF [TESTGUEST_MKDISK, unused]

The test guest's net mode answers ARP and ping at 172.16.0.2. Checked here: ping through
the TAP; a running VM forked into two children that wake up with the same IP and MAC,
each in its own sandbox, all three answering at once; the sandboxes' egress policy
(default deny of the host and private ranges, --egress, --allow, --deny); the CLI's
errors. Nothing leaves namespaces this test makes: a stand-in for the host side of the
sandboxes, and behind it a "LAN" (192.168.77.0/24) and an "internet" (198.51.100.0/24,
TEST-NET-2), all deleted at the end. Exits 77 (meson's "skipped") with a message when it
is not root or lacks /dev/kvm, /dev/net/tun or a tool.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "pylib"))
import mitosvm  # noqa: E402

VMM, TESTGUEST = sys.argv[1:3]
SANDBOX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools",
                       "netns-sandbox")
TAG = str(os.getpid() % 100000)
HOST_NS = f"mitostest-host-{TAG}"
LAN_NS = f"mitostest-lan-{TAG}"
INET_NS = f"mitostest-inet-{TAG}"
GUEST_IP = "172.16.0.2"
BOOT_TIMEOUT = 60

case = mitosvm.Cases()
namespaces = []   # made here, deleted at the end
sandboxes = []
vms = []


def sh(*args, check=True, timeout=60):
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {p.returncode}: {p.stderr.strip()}")
    return p


def in_host(*args, check=True):
    """Runs a command in the stand-in host namespace. nsenter rather than `ip netns
    exec`, whose private mount namespace would hide the namespaces the script adds."""
    return sh("nsenter", f"--net=/run/netns/{HOST_NS}", *args, check=check)


def skip_reason():
    if os.geteuid() != 0:
        return "needs root (network namespaces, TAPs, nftables)"
    for dev in (os.environ.get("MITOS_KVM_DEVICE", "/dev/kvm"), "/dev/net/tun"):
        try:
            os.close(os.open(dev, os.O_RDWR))
        except OSError as e:
            return f"no usable {dev} ({e.strerror})"
    for tool in ("ip", "nsenter", "nft", "ping"):
        if not shutil.which(tool):
            return f"no '{tool}' (tools/setup installs iproute2, nftables, iputils-ping)"
    return None


class VM:
    """mitos-vmm inside a sandbox's namespace, its console collected line by line."""

    def __init__(self, sandbox, args):
        self.p = subprocess.Popen(["ip", "netns", "exec", f"mitos-{sandbox}", VMM] + args,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        vms.append(self)

    def _read(self):
        for line in self.p.stdout:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def output(self):
        with self.cond:
            return "".join(self.lines)

    def wait_for(self, text, timeout=BOOT_TIMEOUT):
        end = time.monotonic() + timeout
        with self.cond:
            while not any(text in line for line in self.lines):
                left = end - time.monotonic()
                if left <= 0 or self.p.poll() is not None:
                    return False
                self.cond.wait(min(left, 0.5))
            return True

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
        try:
            return self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return self.p.wait()


def create_sandbox(name, *opts):
    p = in_host(SANDBOX, "create", name, *opts)
    sandboxes.append(name)
    m = re.search(r"veth mv-\S+ (\S+) <-> veth0 (\S+)", p.stdout)
    return m.group(1) if m else None   # this side's address


def ping(sandbox, addr, count=20, interval="0.05", wait=2):
    """(received, ping's output) for pings from inside the sandbox's namespace."""
    p = sh("ip", "netns", "exec", f"mitos-{sandbox}", "ping", "-n", "-c", str(count), "-i",
           interval, "-W", str(wait), addr, check=False, timeout=120)
    m = re.search(r"(\d+) received", p.stdout)
    return (int(m.group(1)) if m else 0), p.stdout + p.stderr


def reaches(sandbox, addr):
    return ping(sandbox, addr, count=2, interval="0.2", wait=1)[0] > 0


def make_world():
    """The stand-in host namespace with a LAN and an internet behind it."""
    for ns in (HOST_NS, LAN_NS, INET_NS):
        sh("ip", "netns", "add", ns)
        namespaces.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    for ns, dev, net in ((LAN_NS, f"lan{TAG}", "192.168.77"), (INET_NS, f"inet{TAG}", "198.51.100")):
        sh("ip", "-n", HOST_NS, "link", "add", dev, "type", "veth", "peer", "name", "eth0",
           "netns", ns)
        sh("ip", "-n", HOST_NS, "addr", "add", f"{net}.1/24", "dev", dev)
        sh("ip", "-n", HOST_NS, "link", "set", dev, "up")
        sh("ip", "-n", ns, "addr", "add", f"{net}.2/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")


def vm_cases():
    a = f"t{TAG}a"
    create_sandbox(a)
    vm = VM(a, ["run", "--kernel", TESTGUEST, "--net", f"tap=tap0",
                "--cmdline", "testguest.mode=net"])
    case("net guest comes up with its MAC, address and link",
         vm.wait_for("serving") and "mac 06:00:ac:10:00:02 ip 172.16.0.2, link up" in vm.output(),
         vm.output())
    got, out = ping(a, GUEST_IP)
    case("20 pings through the TAP, 20 replies", got == 20, out)
    rc = vm.stop()
    case("SIGTERM ends the VM with 143", rc == 143, f"rc={rc}\n{vm.output()}")

    # Fork for real: snapshot a running VM, start two children in sandboxes of their own.
    # They wake up with the parent's IP and MAC; all three must answer at once.
    tmp = tempfile.mkdtemp(prefix="mitos-net-")
    try:
        ctl, snap = os.path.join(tmp, "ctl"), os.path.join(tmp, "snap")
        parent = VM(a, ["run", "--kernel", TESTGUEST, "--net", "tap=tap0", "--control", ctl,
                        "--cmdline", "testguest.mode=net"])
        ok = parent.wait_for("serving") and ping(a, GUEST_IP, count=3)[0] == 3
        p = sh(VMM, "snapshot", "--control", ctl, "--out", snap, check=False)
        case("snapshot of a VM serving the network", ok and p.returncode == 0,
             p.stdout + p.stderr + parent.output())
        children = {}
        for s in (f"t{TAG}b", f"t{TAG}c"):
            create_sandbox(s)
            children[s] = VM(s, ["restore", "--snapshot", snap, "--net", "tap=tap0"])
        results = {}

        def ping_into(s):
            results[s] = ping(s, GUEST_IP)

        threads = [threading.Thread(target=ping_into, args=(s,)) for s in [a] + list(children)]
        time.sleep(0.5)   # the children have only to map their memory
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for s, (got, out) in results.items():
            case(f"sandbox {s}: 20 of 20 pings answered while its siblings are pinged",
                 got == 20, out + (children[s].output() if s in children else ""))
        case("the children did not boot: they carry on from the snapshot",
             all("hello" not in c.output() for c in children.values()),
             "".join(c.output() for c in children.values()))
        for s, c in children.items():
            rc = c.stop()
            case(f"child in {s} ends with 143", rc == 143, f"rc={rc}\n{c.output()}")
        parent.stop()

        p = sh(VMM, "restore", "--snapshot", snap, check=False)
        case("restore without --net of a snapshot with a network device: exit 1",
             p.returncode == 1 and "--net tap=NAME" in p.stderr, p.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # A bounded run ends by itself with PASS and the guest's counts.
    vm = VM(a, ["run", "--kernel", TESTGUEST, "--net", "tap=tap0",
                "--cmdline", "testguest.mode=net testguest.net_seconds=1"])
    rc = vm.p.wait(timeout=BOOT_TIMEOUT)
    vm.wait_for("PASS", timeout=5)
    case("testguest.net_seconds=1 ends in PASS with exit 0",
         rc == 0 and "echo replies" in vm.output() and "testguest: PASS" in vm.output(),
         f"rc={rc}\n{vm.output()}")


def cli_cases():
    s = f"t{TAG}a"
    for arg, want_rc, want in (("tap=nosuch0", 1, "no network interface nosuch0"),
                               ("tap=lo", 1, "not a TAP"),
                               ("tap=tap0,mac=01:00:00:00:00:01", 2, "unicast"),
                               ("tap=tap0,speed=10", 2, "unknown")):
        p = sh("ip", "netns", "exec", f"mitos-{s}", VMM, "run", "--kernel", TESTGUEST,
               "--net", arg, check=False)
        case(f"--net {arg}: exit {want_rc}", p.returncode == want_rc and want in p.stderr,
             f"rc={p.returncode} {p.stderr}")
    vm = VM(s, ["run", "--kernel", TESTGUEST, "--net", "tap=tap0",
                "--cmdline", "testguest.mode=net"])
    vm.wait_for("serving")
    p = sh("ip", "netns", "exec", f"mitos-{s}", VMM, "run", "--kernel", TESTGUEST,
           "--net", "tap=tap0", check=False)
    case("a TAP already in use: exit 1", p.returncode == 1 and "already attached" in p.stderr,
         p.stderr)
    vm.stop()


def policy_cases():
    p = in_host(SANDBOX, "create", "Bad/Name", check=False)
    case("netns-sandbox refuses a bad name", p.returncode != 0 and "not a sandbox name" in p.stderr,
         p.stderr)
    p = in_host(SANDBOX, "create", f"t{TAG}a", check=False)
    case("netns-sandbox refuses an existing sandbox", p.returncode != 0, p.stderr)

    # Egress off (sandbox a): nothing out, not even to this side's own address.
    a = f"t{TAG}a"
    host_a = in_host("ip", "-4", "-o", "addr", "show", f"mv-{a}").stdout.split()[3].split("/")[0]
    rules = in_host("nft", "list", "table", "inet", f"mitos-{a}").stdout
    routes = sh("ip", "-n", f"mitos-{a}", "route").stdout
    case("no egress: no default route in the sandbox", "default" not in routes, routes)
    case("no egress: the host refuses the sandbox", f'iifname "mv-{a}" drop' in rules, rules)
    case("no egress: the host side of the veth is unreachable", not reaches(a, host_a))
    case("no egress: the outside is unreachable", not reaches(a, "198.51.100.2"))

    # Egress on: the internet yes, the LAN and the host no.
    e = f"t{TAG}e"
    host_e = create_sandbox(e, "--egress")
    rules = in_host("nft", "list", "table", "inet", f"mitos-{e}").stdout
    case("egress: rules with masquerade and the private ranges",
         all(x in rules for x in ("masquerade", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                  "169.254.0.0/16", "100.64.0.0/10", "fc00::/7")), rules)
    case("egress: the internet is reachable, through NAT", reaches(e, "198.51.100.2"))
    case("egress: a private LAN is not", not reaches(e, "192.168.77.2"))
    case("egress: the host's own addresses are not",
         not reaches(e, host_e) and not reaches(e, "192.168.77.1"))

    # Per-sandbox lists: allow opens the LAN host and this side, deny beats allow.
    w = f"t{TAG}w"
    host_w = create_sandbox(w, "--egress", "--allow", "192.168.77.2/32", "--allow",
                            "10.200.0.0/16", "--deny", "198.51.100.0/24", "--deny",
                            "192.168.77.2")
    case("--allow: the host side of the veth answers", reaches(w, host_w))
    case("--deny beats --allow for 192.168.77.2", not reaches(w, "192.168.77.2"))
    case("--deny: the internet range is refused", not reaches(w, "198.51.100.2"))
    x = f"t{TAG}x"
    create_sandbox(x, "--egress", "--allow", "192.168.77.2/32")
    case("--allow: a LAN host becomes reachable", reaches(x, "192.168.77.2"))

    p = in_host(SANDBOX, "delete", x, check=False)
    gone = (p.returncode == 0 and not os.path.exists(f"/run/netns/mitos-{x}") and
            in_host("nft", "list", "table", "inet", f"mitos-{x}", check=False).returncode != 0)
    case("delete removes the namespace and the rules", gone, p.stdout + p.stderr)
    if gone:
        sandboxes.remove(x)


def cleanup():
    for vm in vms:
        vm.stop()
    for s in sandboxes:
        in_host(SANDBOX, "delete", s, check=False)
    for ns in namespaces:
        sh("ip", "netns", "del", ns, check=False)


def main():
    reason = skip_reason()
    if reason:
        print(f"SKIP: {reason}")
        return 77
    try:
        make_world()
        vm_cases()
        cli_cases()
        policy_cases()
    finally:
        cleanup()
    return case.finish()


if __name__ == "__main__":
    sys.exit(main())
