#!/usr/bin/env python3
"""KVM integration: snapshot, restore and copy-on-write fork of the test guest.

usage: test_snapshot.py MITOS_VMM TESTGUEST_ELF TESTGUEST_MKDISK

The test guest's snap mode ticks at 100 Hz and prints "tick <seq> counter <n>" every
50 ticks (n == 50 * seq); it takes commands on its serial port (w<c> mark, p RAM mark,
r disk mark, q quit). Exits 77 where /dev/kvm is absent.
"""
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "pylib"))
import mitosvm  # noqa: E402
from mitosvm import wait_for_socket  # noqa: E402

VMM, TESTGUEST, MKDISK = sys.argv[1:4]
VM = functools.partial(mitosvm.VM, VMM)
TICKS_PER_LINE = 50
case = mitosvm.Cases()


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def snapshot_hashes(d):
    return {n: sha(os.path.join(d, n)) for n in sorted(os.listdir(d))}


def restore(tmp, snap, name, control=False, extra=()):
    disk = os.path.join(tmp, f"{name}.img")
    shutil.copyfile(os.path.join(tmp, "parent.img"), disk)
    args = ["restore", "--snapshot", snap, "--disk", f"0={disk}"] + list(extra)
    ctl = None
    if control:
        ctl = os.path.join(tmp, f"{name}.sock")
        args += ["--control", ctl]
    vm = VM(args, ctl)
    if ctl:
        wait_for_socket(ctl)
    return vm


def generation(vm):
    """The VM generation ID the test guest prints, or None (no answer, or it is gone)."""
    try:
        vm.send("g")
    except OSError:
        return None
    m = vm.wait_for(r"generation ([0-9a-f]{32})")
    return m.group(1) if m else None


def snapshot_of(vm, out):
    r = subprocess.run([VMM, "snapshot", "--control", vm.control, "--out", out],
                       capture_output=True, timeout=120)
    return r.returncode, r.stdout.decode() + r.stderr.decode()


def main():
    return mitosvm.run_kvm_suite(case, "mitos-snap-", run_cases)


def run_cases(tmp):
    disk = os.path.join(tmp, "parent.img")
    subprocess.run([MKDISK, disk, "2048"], check=True)
    ctl = os.path.join(tmp, "parent.sock")
    parent = VM(["run", "--kernel", TESTGUEST, "--disk", disk, "--mem", "64", "--control", ctl,
                 "--cmdline", "testguest.mode=snap"], ctl)
    case("parent boots into snap mode", parent.wait_for(r"tick 2 counter") is not None,
         "\n".join(parent.seen))
    parent.send("wP")
    case("parent writes its mark", parent.wait_for(r"wrote mark P") is not None)
    parent_gen = generation(parent)
    case("parent has a VM generation ID", parent_gen not in (None, "0" * 32), str(parent_gen))
    # Pause, note the last tick printed, snapshot while paused, stop: the child must print
    # exactly the next tick.
    case("pause", parent.call({"cmd": "pause"}).get("ok") is True)
    time.sleep(0.3)
    parent.drain()
    ticks = [int(m.group(1)) for m in (re.search(r"tick (\d+) ", x) for x in parent.seen) if m]
    last = ticks[-1] if ticks else 0
    base = os.path.join(tmp, "base")
    rc, out = snapshot_of(parent, base)
    case("snapshot of a paused VM", rc == 0 and os.path.exists(os.path.join(base, "config.json")), out)
    st = parent.call({"cmd": "status"})
    case("status says paused after a snapshot of a paused VM", st.get("state") == "paused", str(st))
    rc, out = snapshot_of(parent, base)
    case("snapshot refuses to overwrite a snapshot", rc == 1 and "already holds" in out, out)
    parent.call({"cmd": "stop"})
    rc, err = parent.finish()
    case("parent stops through the control socket", rc == 0, err)
    before = snapshot_hashes(base)
    mem_blocks = os.stat(os.path.join(base, "memory")).st_blocks * 512
    case("memory file is sparse", mem_blocks < 16 << 20, f"{mem_blocks} bytes allocated")

    # 1. The vCPU continues exactly where it stopped.
    c = restore(tmp, base, "c0")
    m = c.wait_for(r"tick (\d+) counter (\d+)")
    case("child continues the tick sequence exactly",
         m is not None and int(m.group(1)) == last + 1 and int(m.group(2)) == (last + 1) * TICKS_PER_LINE,
         f"parent's last tick {last}, child printed {m.group(0) if m else c.seen}")
    c.send("p")
    case("child has the parent's RAM mark", c.wait_for(r"ram mark P counter \d+ page ok") is not None,
         "\n".join(c.seen))
    c.send("r")
    case("child's disk copy has the parent's mark", c.wait_for(r"disk mark P") is not None)
    gen = generation(c)
    case("child has a new VM generation ID", gen is not None and gen != parent_gen,
         f"parent {parent_gen}, child {gen}")
    c.send("q")
    rc, err = c.finish()
    case("child quits with 0", rc == 0, err)

    # 2. Siblings do not see each other's writes, and the snapshot never changes.
    a, b = restore(tmp, base, "a"), restore(tmp, base, "b")
    a.send("wA")
    b.send("wB")
    ok = a.wait_for(r"wrote mark A") and b.wait_for(r"wrote mark B")
    a.send("pr")
    b.send("pr")
    ok = ok and a.wait_for(r"ram mark A .* page ok") and a.wait_for(r"disk mark A")
    ok = ok and b.wait_for(r"ram mark B .* page ok") and b.wait_for(r"disk mark B")
    case("siblings keep their own RAM and disk", bool(ok), "\n".join(a.seen + ["--"] + b.seen))
    a.send("q")
    b.send("q")
    a.finish()
    b.finish()
    case("snapshot files unchanged by children", snapshot_hashes(base) == before)

    # 3. A chain of three layers.
    snaps = [base]
    for depth, mark in enumerate("123", start=1):
        vm = restore(tmp, snaps[-1], f"l{depth}", control=True)
        vm.send("w" + mark)
        ok = vm.wait_for(rf"wrote mark {mark}") is not None
        layer = os.path.join(tmp, f"layer{depth}")
        rc, out = snapshot_of(vm, layer)
        vm.call({"cmd": "stop"})
        vm.finish()
        cfg = json.load(open(os.path.join(layer, "config.json"))) if rc == 0 else {}
        case(f"layer {depth} names its parent",
             ok and rc == 0 and cfg.get("depth") == depth and cfg.get("parent") == os.path.realpath(snaps[-1]),
             out + str(cfg))
        layer_blocks = os.stat(os.path.join(layer, "memory")).st_blocks * 512
        case(f"layer {depth} holds only changed pages", layer_blocks < mem_blocks,
             f"layer {layer_blocks} vs base {mem_blocks}")
        snaps.append(layer)
    top = restore(tmp, snaps[-1], "top")
    top.send("p")
    case("restoring a depth-3 chain sees the newest mark",
         top.wait_for(r"ram mark 3 counter \d+ page ok") is not None, "\n".join(top.seen))
    gen = generation(top)
    case("depth-3 child has a new VM generation ID", gen is not None and gen != parent_gen,
         f"parent {parent_gen}, child {gen}")
    top.send("q")
    rc, err = top.finish()
    case("depth-3 child quits with 0", rc == 0, err)
    case("base unchanged by layers", snapshot_hashes(base) == before)

    # 4. Fifty children of one snapshot at once.
    kids = [restore(tmp, base, f"k{i}") for i in range(50)]
    ticking = sum(1 for k in kids if k.wait_for(r"tick \d+ counter", timeout=120))
    gens = [generation(k) for k in kids]
    case("50 children have 50 distinct VM generation IDs, none the parent's",
         len(set(gens)) == 50 and None not in gens and parent_gen not in gens,
         f"{len(set(gens))} distinct, {gens.count(None)} without an answer")
    for i, k in enumerate(kids):
        try:
            k.send("w" + chr(ord("a") + i % 26) + "q")
        except OSError:
            pass
    ends = [k.finish(timeout=120) for k in kids]
    codes = [rc for rc, _ in ends]
    case("50 children run at once", ticking == 50 and codes == [0] * 50,
         f"{ticking} ticking, exit codes {codes}; "
         + "; ".join(f"child {i}: {err.strip()[-300:]}" for i, (rc, err) in enumerate(ends) if rc))

    # 5. Prepared VMs armed ahead (`vm --arm`): the armed snapshot, another one, and the
    # armed one rewritten in between all restore what is on disk at the request.
    armed_cases(tmp, base, last)

    # 6. Bad snapshots: a clear error naming the file, nothing starts.
    bad_cases(tmp, base)

    # 7. Disks handed over open, as serve does for a jailed VM.
    descriptor_cases(tmp)


def descriptor_cases(tmp):
    """The snapshot of a VM whose disk came as a descriptor records the name it was given
    (the VM may not see that path) and the size the device has; a child gets its own
    copy the same way; a relative name cannot go into a snapshot."""
    disk = os.path.join(tmp, "byfd.img")
    subprocess.run([MKDISK, disk, "2048"], check=True)
    name = "/nonexistent/by-descriptor.img"
    for given, snap in ((name, os.path.join(tmp, "byfd-snap")), ("relative.img", os.path.join(tmp, "byfd-rel"))):
        fd = os.open(disk, os.O_RDWR | os.O_CLOEXEC)
        ctl = os.path.join(tmp, "byfd.sock")
        vm = VM(["run", "--kernel", TESTGUEST, "--disk", f"{given},fd={fd}", "--mem", "64", "--control", ctl,
                 "--cmdline", "testguest.mode=snap"], ctl, pass_fds=(fd,))
        os.close(fd)
        ticking = vm.wait_for(r"tick 2 counter") is not None
        rc, out = snapshot_of(vm, snap)
        vm.call({"cmd": "stop"})
        vm.finish()
        if given == name:
            cfg = {}
            if rc == 0:
                with open(os.path.join(snap, "config.json")) as f:
                    cfg = json.load(f)
            case("a snapshot of a VM whose disk came as a descriptor keeps its name and size",
                 ticking and rc == 0 and cfg["disks"][0]["path"] == name and
                 cfg["disks"][0]["bytes"] == 2048 * 512, f"{out} {cfg}")
        else:
            case("a disk handed over with a relative name: the snapshot says why it cannot",
                 ticking and rc != 0 and "relative" in out, out)
    copy = os.path.join(tmp, "byfd-child.img")
    shutil.copyfile(disk, copy)
    fd = os.open(copy, os.O_RDWR | os.O_CLOEXEC)
    c = VM(["restore", "--snapshot", os.path.join(tmp, "byfd-snap"), "--disk", f"0={name},fd={fd}"],
           pass_fds=(fd,))
    os.close(fd)
    ok = c.wait_for(r"tick \d+ counter") is not None
    c.send("q")
    rc, err = c.finish()
    case("its child restores with its own copy handed over the same way", ok and rc == 0,
         "\n".join(c.seen) + err)


def private_kib(pid, path):
    """Private pages (KiB) of pid's mappings of path; None when it maps none of it."""
    total, inside = None, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                inside = line.rstrip().endswith(" " + path)
                if inside and total is None:
                    total = 0
            elif inside and line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def armed_cases(tmp, base, last):
    """The child of a snapshot prints as its first tick the one after the snapshot's: base's
    is last + 1, and a layer taken three lines later prints a later one."""
    vm = restore(tmp, base, "later-src", control=True)
    vm.wait_for(rf"tick {last + 3} counter")
    vm.call({"cmd": "pause"})
    later = os.path.join(tmp, "later")
    rc, out = snapshot_of(vm, later)
    vm.call({"cmd": "stop"})
    vm.finish()
    case("a snapshot three tick lines after the base", rc == 0, out)

    def prepared(name, arm):
        ctl = os.path.join(tmp, f"{name}.sock")
        vm = VM(["vm", "--control", ctl, "--mem", "64", "--arm", arm], ctl, stdin=False)
        wait_for_socket(ctl)
        return vm

    def first_tick(vm, snap, name):
        disk = os.path.join(tmp, f"{name}.img")
        shutil.copyfile(os.path.join(tmp, "parent.img"), disk)
        r = vm.call({"cmd": "restore", "snapshot": snap, "disks": [{"index": 0, "path": disk}]})
        m = vm.wait_for(r"tick (\d+) counter") if r.get("ok") else None
        vm.call({"cmd": "stop"})
        return (int(m.group(1)) if m else None), r, vm.finish()[1]

    vm = prepared("armed", base)
    private = private_kib(vm.p.pid, os.path.join(base, "memory"))
    case("an armed VM maps the snapshot's memory and owns none of it",
         private is not None and private == 0, f"private {private} KiB")
    tick, r, _ = first_tick(vm, base, "armed")
    case("an armed VM restores the snapshot it was armed with",
         tick == last + 1 and "arm" in {p["name"] for p in r.get("phases", [])}, f"{tick} {r} {vm.seen}")
    vm = prepared("other", base)
    tick, r, _ = first_tick(vm, later, "other")
    case("an armed VM restores another snapshot it is asked for", tick is not None and tick > last + 3,
         f"{tick} {r} {vm.seen}")
    moved = os.path.join(tmp, "rewritten")
    shutil.copytree(base, moved)
    vm = prepared("rewritten", moved)
    shutil.rmtree(moved)
    shutil.copytree(later, moved)
    tick, r, _ = first_tick(vm, moved, "rewritten")
    case("a snapshot rewritten after arming is read again", tick is not None and tick > last + 3,
         f"{tick} {r} {vm.seen}")
    vm = prepared("missing", os.path.join(tmp, "no-such-snapshot"))
    tick, r, err = first_tick(vm, base, "missing")
    case("a VM whose arming failed says so and still restores",
         tick == last + 1 and "not armed with" in err, f"{tick} {r} {err}")


def corrupt_copy(tmp, base, name, mutate):
    d = os.path.join(tmp, name)
    shutil.copytree(base, d)
    for n in os.listdir(d):
        os.chmod(os.path.join(d, n), 0o644)
    mutate(d)
    return d


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xff]))


def bad_cases(tmp, base):
    def truncate(p, n):
        with open(p, "r+b") as f:
            f.truncate(n)

    def set_version(d):
        with open(os.path.join(d, "state"), "r+b") as f:
            f.seek(8)
            f.write((99).to_bytes(4, "little"))

    def set_format(d):
        cfg = json.load(open(os.path.join(d, "config.json")))
        cfg["format"] = 7
        json.dump(cfg, open(os.path.join(d, "config.json"), "w"))

    bad = [
        ("truncated state", lambda d: truncate(os.path.join(d, "state"), 100), "state", "truncated"),
        ("corrupt state", lambda d: flip_byte(os.path.join(d, "state"), 2000), "state", "CRC"),
        ("wrong state version", set_version, "state", "version"),
        ("wrong-size memory", lambda d: truncate(os.path.join(d, "memory"), 4096), "memory", "bytes"),
        ("missing config", lambda d: os.unlink(os.path.join(d, "config.json")), "config.json", "No such file"),
        ("wrong config format", set_format, "config.json", "format"),
    ]
    for name, mutate, fname, why in bad:
        d = corrupt_copy(tmp, base, name.replace(" ", "-"), mutate)
        vm = restore(tmp, d, "bad")
        rc, err = vm.finish(timeout=30)
        case(f"{name}: clear error", rc == 1 and fname in err and why in err, f"rc={rc} {err}")

    vm = VM(["restore", "--snapshot", base])
    rc, err = vm.finish(timeout=30)
    case("read-write disk without its own copy is refused", rc == 1 and "--disk 0=PATH" in err, err)


if __name__ == "__main__":
    sys.exit(main())
