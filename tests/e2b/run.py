#!/usr/bin/env python3
"""Starts `mitos-vmm serve` (process engine) and runs the E2B SDK scenarios
against it with only E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY set.
usage: run.py MITOS_VMM MITOS_AGENT E2B_DIR [--kvm] [--bench RUNS | node --test args...]
--bench runs bench.mjs for tools/bench-e2b instead of the scenarios. --kvm runs serve
on the kvm engine with the built python image and firmware kernel (skips, 77, when
either is missing): E2B's templates are then microVMs forked from a snapshot. On
emulation-only KVM the scenarios see MITOS_E2B_SLOW_GUEST=1."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "api"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "pylib"))
import budget  # noqa: E402
from mitos_test import Server  # noqa: E402

vmm, agent, e2b_dir = sys.argv[1:4]
rest = sys.argv[4:]
kvm = rest[:1] == ["--kvm"]
if kvm:
    rest = rest[1:]
if os.geteuid() != 0:
    print("SKIP: the process engine needs root")
    sys.exit(77)
if not os.path.isdir(os.path.join(e2b_dir, "node_modules", "e2b")):
    print("SKIP: run tools/setup (npm ci in tests/e2b) first")
    sys.exit(77)
# The form the SDKs check before sending a key: "e2b_" and hex.
token = "e2b_" + "5eed0123" * 5
# The bench runs on the built template image when there is one (tools/build-image):
# the host's own / is what the scenarios use, but its login-shell profile is not
# what a sandbox costs.
bench = rest[:1] == ["--bench"]
cache = os.environ.get("MITOS_CACHE", os.path.expanduser("~/.cache/mitos"))
images = os.path.join(cache, "images")
extra = ["--images", images] if (bench or kvm) and os.path.isdir(images) else []
if kvm:
    if not os.path.exists("/dev/kvm") or not extra:
        print("SKIP: the kvm engine needs /dev/kvm and the python image (tools/build-image)")
        sys.exit(77)
    kernel = os.path.join(cache, "kernel", "current-pvm" if budget.emulated(vmm) else "current", "vmlinux")
    if not os.path.exists(kernel):
        print("SKIP: no firmware kernel at %s (firmware/build-kernel.sh)" % kernel)
        sys.exit(77)
    extra += ["--engine", "kvm", "--kvm-pool", "1"]
s = Server(vmm, agent, token=token, extra=extra + ["--max-sandboxes", "16", "--preview-domain", "e2b.test"])
rc = None
try:
    if kvm:
        # The templates boot and snapshot a guest first (minutes under emulation):
        # longer than any SDK call waits, so they are built before the SDK runs.
        wait = budget.seconds(vmm, 10, budget.TEMPLATE_MINSTR)
        for tpl in ("base", "code-interpreter-v1"):
            c = s.conn(timeout=wait)
            c.request("POST", "/v1/templates", body=json.dumps({"id": tpl}),
                      headers=s.headers({"Content-Type": "application/json"}))
            r = c.getresponse()
            body = r.read()
            c.close()
            if r.status != 200:
                raise RuntimeError("template %s: %d %s" % (tpl, r.status, body[:300]))
    url = "http://127.0.0.1:%d" % s.port
    env = {k: v for k, v in os.environ.items() if not k.startswith("E2B_")}
    env.update(E2B_API_URL=url, E2B_SANDBOX_URL=url, E2B_API_KEY=token)
    # Under emulation-only KVM a guest's kernel runs about a thousand times slower: the
    # scenarios that start an IPython kernel or move tens of MB through it wait longer
    # or move less there (they say where).
    if kvm and budget.emulated(vmm):
        env["MITOS_E2B_SLOW_GUEST"] = "1"
    env["MITOS_E2B_ENGINE"] = "kvm" if kvm else "process"
    if bench:
        cmd = ["node", "bench.mjs"] + rest[1:]
    else:
        files = rest or sorted(f for f in os.listdir(e2b_dir) if f.startswith("test_") and f.endswith(".mjs"))
        cmd = ["node", "--test", "--test-concurrency=1"] + files
    rc = subprocess.call(cmd, cwd=e2b_dir, env=env, timeout=1500)
finally:
    # A run cut short (a template build refused, serve gone) says what serve said.
    died = s.proc.poll()
    s.cleanup()
    if rc is None:
        sys.stderr.write("--- the run stopped early; serve %s; its stderr ---\n%s" % (
            "was running" if died is None else "had exited with %s" % died, s.stderr()[-20000:]))
log = s.stderr()
# A sanitizer build reports into serve's stderr; serve keeps running after UBSan's.
if "ERROR: AddressSanitizer" in log or "ERROR: LeakSanitizer" in log or "runtime error:" in log:
    rc = rc or 1
if rc:
    sys.stderr.write("--- serve's stderr ---\n" + log[-20000:])
sys.exit(rc)
