"""What the Linux-guest suites share: the kernel for this host (built or cached by
firmware/build-kernel.sh, the pvm variant on emulation-only KVM), its command line, the
root image, and booting or restoring a VM until its agent answers on vsock.

Raising Skip means the suite cannot run here (no KVM, no static agent, no kernel
source); the suites turn it into exit status 77."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools", "pylib"))
from agent_client import Agent, AgentError  # noqa: E402
from mitosvm import VM, wait_for_socket  # noqa: E402
import budget  # noqa: E402

# What follows "--" goes to init: the agent finds mitos_kernel.py itself, so this only
# checks that arguments reach it (mitos-vmm puts its virtio_mmio.device= entries before).
# What Linux prints when its vmgenid driver sees the VM generation ID change
# (add_vmfork_randomness): once in every restored child, never in a fresh boot.
VMFORK_LINE = "crng reseeded due to virtual machine fork"
ROOT_ARGS = ("root=/dev/vda ro rootfstype=ext4 init=/usr/bin/mitos-agent "
             "-- --python-helper=/usr/share/mitos/mitos_kernel.py")


class Skip(Exception):
    pass


class Env:
    """One suite's VMM, agent, source tree and clock; every VM it starts is killed by
    cleanup()."""

    def __init__(self, vmm, agent, root):
        self.vmm, self.agent, self.root = vmm, agent, root
        self.t0 = time.time()
        self.vms = []
        # This machine's budgets (tools/pylib/budget.py): boot to agent-ready, and the
        # longest single operation (the first run_code starts IPython).
        self.boot_timeout = budget.seconds(vmm, 10, budget.BOOT_MINSTR)
        self.op_timeout = budget.seconds(vmm, 30, budget.IPYTHON_MINSTR)

    def log(self, msg):
        print(f"[{time.time() - self.t0:7.1f}s] {msg}", flush=True)

    def check_host(self):
        try:
            os.close(os.open("/dev/kvm", os.O_RDWR))
        except OSError as e:
            raise Skip(f"no usable /dev/kvm ({e.strerror})")
        r = subprocess.run(["readelf", "-l", self.agent], capture_output=True, text=True)
        if r.returncode != 0 or "INTERP" in r.stdout:
            raise Skip(f"{self.agent} is dynamically linked (sanitizer build); the guest needs "
                       "the static agent of the plain build, where this suite runs")

    def emulation_only(self):
        r = subprocess.run([self.vmm, "check", "--json"], capture_output=True, text=True,
                           timeout=120)
        try:
            return json.loads(r.stdout)["virtualization"] != "hardware"
        except (ValueError, KeyError):
            raise Skip(f"mitos-vmm check --json gave no verdict: {r.stdout}{r.stderr}")

    def kernel(self, pvm):
        """The vmlinux for this host; MITOS_LINUX_KERNEL=PATH overrides the build."""
        override = os.environ.get("MITOS_LINUX_KERNEL")
        if override:
            return override
        if shutil.which("dpkg-query") is None or not linux_source_available():
            raise Skip("Debian's linux-source-6.1 is not available here (apt-cache policy "
                       "linux-source-6.1 has no candidate): the guest kernel cannot be built")
        if os.geteuid() != 0 and shutil.which("sudo") is None:
            raise Skip("building the guest kernel installs packages: run as root or with sudo")
        args = [os.path.join(self.root, "firmware", "build-kernel.sh")]
        if pvm:
            args += ["--variant", "pvm"]
        self.log(f"building the guest kernel ({' '.join(args[1:]) or 'plain'}; about 7 minutes "
                 "on 2 cores the first time, cached afterwards)")
        r = subprocess.run(args, stdout=subprocess.PIPE, text=True, timeout=3000)
        if r.returncode != 0:
            raise RuntimeError(f"firmware/build-kernel.sh failed (exit {r.returncode}); its log is above")
        return os.path.join(r.stdout.strip().splitlines()[-1], "vmlinux")

    def tuning(self, pvm):
        """The kernel command line for this host, without the root and init arguments."""
        if not pvm:
            return "console=ttyS0 panic=-1 reboot=k"
        with open(os.path.join(self.root, "firmware", "guest-pvm.cmdline")) as f:
            return " ".join(ln.strip() for ln in f if ln.strip() and not ln.startswith("#"))

    def rootfs(self, out, *options):
        subprocess.run([os.path.join(self.root, "firmware", "build-rootfs.sh"), "--agent",
                        self.agent, "--out", out] + list(options), check=True, timeout=900)
        return out

    def start_vm(self, args, control):
        vm = VM(self.vmm, args, control)
        self.vms.append(vm)
        return vm

    def boot(self, tmp, name, kernel, cmdline, boot_args, case):
        """Boots to agent-ready: (vm, seconds to init, seconds to agent-ready, agent);
        the last three are None when it did not get there (case says why)."""
        vsock, ctl = os.path.join(tmp, f"{name}.vsock"), os.path.join(tmp, f"{name}.ctl")
        start = time.time()
        vm = self.start_vm(["run", "--kernel", kernel, "--cmdline", cmdline, "--vsock", vsock,
                            "--control", ctl, "--stats"] + boot_args, ctl)
        wait_for_socket(ctl)
        m = vm.wait_for(r"Run \S+ as init process", timeout=self.boot_timeout)
        t_init = time.time() - start
        case(f"{name}: kernel boots to init", m is not None, "\n".join(vm.seen[-40:]))
        if m is None:
            return vm, None, None, None
        self.log(f"{name}: init after {t_init:.1f} s")
        try:
            a = Agent.connect(vsock, deadline=start + self.boot_timeout, timeout=self.op_timeout)
        except AgentError as e:
            vm.drain()
            case(f"{name}: agent answers on vsock", False, f"{e}\n" + "\n".join(vm.seen[-40:]))
            return vm, None, None, None
        t_ready = time.time() - start
        health = a.call("health")
        case(f"{name}: agent answers on vsock as PID 1",
             health.get("pid") == 1 and health.get("init") is True, str(health))
        self.log(f"{name}: agent ready after {t_ready:.1f} s")
        return vm, t_init, t_ready, a

    def restore_child(self, tmp, snap, name):
        """(vm, agent, seconds from `mitos-vmm restore` to the agent's HELLO)."""
        vsock, ctl = os.path.join(tmp, f"{name}.vsock"), os.path.join(tmp, f"{name}.ctl")
        start = time.time()
        vm = self.start_vm(["restore", "--snapshot", snap, "--vsock", vsock, "--control", ctl],
                           ctl)
        wait_for_socket(ctl)
        a = Agent.connect(vsock, deadline=start + self.op_timeout, timeout=self.op_timeout)
        return vm, a, time.time() - start

    def stop(self, vm):
        """(exit status, stderr); a VM that already ended (its control socket gone) is
        waited for, so the caller sees how it ended."""
        try:
            vm.call({"cmd": "stop"})
        except OSError:
            pass
        return vm.finish(timeout=self.op_timeout)

    def snapshot(self, vm, out):
        return subprocess.run([self.vmm, "snapshot", "--control", vm.control, "--out", out],
                              capture_output=True, text=True, timeout=300)

    def cleanup(self):
        for vm in self.vms:
            if vm.p.poll() is None:
                vm.p.kill()
                vm.p.wait()

    def run(self, prefix, body):
        """A suite's main(): body(tmp, kernel, pvm) in a temporary directory; 77 when
        the host cannot run it (Skip), else None. Every VM is gone afterwards."""
        tmp = tempfile.mkdtemp(prefix=prefix)
        try:
            self.check_host()
            pvm = self.emulation_only()
            body(tmp, self.kernel(pvm), pvm)
        except Skip as e:
            print(f"SKIP: {e}")
            return 77
        finally:
            self.cleanup()
            shutil.rmtree(tmp, ignore_errors=True)
        return None


def linux_source_available():
    installed = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", "linux-source-6.1"],
                               capture_output=True, text=True)
    if installed.stdout == "installed":
        return True
    policy = subprocess.run(["apt-cache", "policy", "linux-source-6.1"], capture_output=True, text=True)
    m = re.search(r"Candidate:\s*(\S+)", policy.stdout)
    if not m or m.group(1) == "(none)":
        # The package lists may just be stale on a fresh machine.
        subprocess.run(["apt-get", "update", "-q"], capture_output=True)
        policy = subprocess.run(["apt-cache", "policy", "linux-source-6.1"], capture_output=True, text=True)
        m = re.search(r"Candidate:\s*(\S+)", policy.stdout)
    return bool(m) and m.group(1) != "(none)"


def main_value(events):
    results = [e for e in events if e.get("type") == "result" and e.get("is_main_result")]
    return results[0]["data"].get("text/plain") if results else None
