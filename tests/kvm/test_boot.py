#!/usr/bin/env python3
"""KVM integration: boots the test guest and hand-made tiny guests under the real VMM.

usage: test_boot.py MITOS_VMM TESTGUEST_ELF TESTGUEST_MKDISK

Every case runs `mitos-vmm run` as a user would and checks its exit status and output.
Exits 77 (meson's "skipped") with a message when this host has no usable /dev/kvm.
"""
import os
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "pylib"))
import mitosvm  # noqa: E402

VMM, TESTGUEST, MKDISK = sys.argv[1:4]
TIMEOUT = 120
DISK_SECTORS = 2048  # 1 MiB
case = mitosvm.Cases()


def run(args, timeout=TIMEOUT, pass_fds=()):
    p = subprocess.run([VMM, "run"] + args, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout, pass_fds=pass_fds)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def elf(code, paddr=0x200000):
    """A minimal ELF64 x86-64 executable: one PT_LOAD of `code` at `paddr`, entry there."""
    ehdr_size, phdr_size = 64, 56
    off = ehdr_size + phdr_size
    ehdr = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0,
                       2, 62, 1, paddr, ehdr_size, 0, 0, ehdr_size, phdr_size, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, off, paddr, paddr, len(code), len(code), 0x1000)
    return ehdr + phdr + code


def write_tmp(data, suffix):
    fd, path = tempfile.mkstemp(suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def make_disk():
    fd, path = tempfile.mkstemp(suffix=".img")
    os.close(fd)
    subprocess.run([MKDISK, path, str(DISK_SECTORS)], check=True)
    return path


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def main():
    if not mitosvm.kvm_usable("; the KVM integration suite needs one"):
        return 77
    tmp = []

    # The test guest with a read-write disk: verifies the pattern, writes, reads back,
    # restores the pattern. The image must be byte-identical afterwards.
    disk = make_disk()
    tmp.append(disk)
    before = file_bytes(disk)
    rc, out, err = run(["--kernel", TESTGUEST, "--disk", disk, "--stats"])
    case("testguest rw disk passes", rc == 0 and "testguest: PASS" in out, out + err)
    case("testguest restores its disk", file_bytes(disk) == before)
    case("--stats prints exit counts", "stats: exits: io=" in err, err)

    rc, out, err = run(["--kernel", TESTGUEST, "--disk", disk + ",ro"])
    case("testguest read-only disk passes", rc == 0 and "testguest: PASS" in out, out + err)
    case("read-only disk refuses writes", "read-only" in out, out)
    case("read-only disk is unchanged", file_bytes(disk) == before)

    rc, out, err = run(["--kernel", TESTGUEST, "--vcpus", "2", "--mem", "64",
                        "--cmdline", "testguest.mode=none testguest.cpus=2"])
    case("testguest finds 2 CPUs in the MP table", rc == 0 and "testguest: PASS" in out,
         out + err)

    # As serve runs VMs: under the seccomp filters (the process's, and each vCPU
    # thread's own), with the disk handed over open (its path only names it).
    fd = os.open(disk, os.O_RDWR | os.O_CLOEXEC)
    rc, out, err = run(["--kernel", TESTGUEST, "--seccomp", "--vcpus", "2",
                        "--cmdline", "testguest.cpus=2",
                        "--disk", f"/nonexistent/by-descriptor.img,fd={fd}"], pass_fds=(fd,))
    os.close(fd)
    case("testguest rw disk passes under seccomp, 2 vCPUs, disk as a descriptor",
         rc == 0 and "testguest: PASS" in out and "seccomp" not in err, out + err)
    case("the disk it was handed is restored too", file_bytes(disk) == before)
    fd = os.open(disk, os.O_RDONLY | os.O_CLOEXEC)
    rc, out, err = run(["--kernel", TESTGUEST, "--disk", f"{disk},fd={fd}"], pass_fds=(fd,))
    os.close(fd)
    case("a read-only descriptor for a read-write disk is refused before boot",
         rc != 0 and "not open for writing" in err, f"rc={rc} {err}")

    rc, out, err = run(["--kernel", TESTGUEST, "--vcpus", "3",
                        "--cmdline", "testguest.mode=none testguest.cpus=2"])
    case("testguest notices a wrong CPU count", rc not in (0, 1, 2, 3) and "FAIL" in out,
         f"rc={rc}\n" + out + err)

    # Hand-made guests for the VMM's own exit paths.
    k = write_tmp(elf(bytes([0xb0, 42, 0xe6, 0xf4, 0xf4])), ".elf")  # mov al,42; out 0xf4,al
    tmp.append(k)
    rc, out, err = run(["--kernel", k])
    case("debug-exit value becomes the exit status", rc == 42, f"rc={rc} {err}")

    k = write_tmp(elf(bytes([0xb0, 0xfe, 0xe6, 0x64, 0xf4])), ".elf")  # i8042 reset
    tmp.append(k)
    rc, out, err = run(["--kernel", k])
    case("i8042 reset ends the VM with 0", rc == 0, f"rc={rc} {err}")
    # The vCPU thread that takes the reset ends the VM under its own filter.
    rc, out, err = run(["--kernel", k, "--seccomp"])
    case("i8042 reset under seccomp ends the VM with 0", rc == 0, f"rc={rc} {err}")

    k = write_tmp(elf(bytes([0x0f, 0x0b])), ".elf")  # ud2 with no IDT: triple fault
    tmp.append(k)
    rc, out, err = run(["--kernel", k])
    case("guest triple fault exits 3 with a message",
         rc == 3 and ("triple fault" in err or "emulate" in err), f"rc={rc} {err}")

    # clac; mov al, 7; out 0xf4, al. Emulation-only KVM cannot run CLAC: the VMM's
    # emulation assist performs it and the guest goes on to exit 7. Hardware KVM runs it
    # (7) or, without SMAP, raises #UD into a triple fault (3).
    k = write_tmp(elf(bytes([0x0f, 0x01, 0xca, 0xb0, 7, 0xe6, 0xf4, 0xf4])), ".elf")
    tmp.append(k)
    rc, out, err = run(["--kernel", k, "--stats"])
    case("clac is performed or faults, never hangs", rc in (7, 3), f"rc={rc} {err}")

    # xrstor [rdi]: nothing emulates it on emulation-only KVM, so the VMM must stop with
    # the instruction bytes; on hardware KVM (no CR4.OSXSAVE) it is #UD, a triple fault.
    k = write_tmp(elf(bytes([0x0f, 0xae, 0x2f, 0xf4])), ".elf")
    tmp.append(k)
    rc, out, err = run(["--kernel", k])
    case("an instruction nobody can emulate is diagnosed",
         rc == 3 and ("0f ae 2f" in err or "triple fault" in err), f"rc={rc} {err}")

    # Errors a user can make.
    rc, out, err = run(["--kernel", "/nonexistent/vmlinux"])
    case("missing kernel: exit 1 with the path", rc == 1 and "/nonexistent/vmlinux" in err, err)
    junk = write_tmp(os.urandom(4096), ".bin")
    tmp.append(junk)
    rc, out, err = run(["--kernel", junk])
    case("malformed kernel: exit 1", rc == 1 and err.strip() != "", err)
    rc, out, err = run(["--kernel", TESTGUEST, "--frobnicate"])
    case("unknown flag: exit 2", rc == 2, err)
    rc, out, err = run(["--kernel", TESTGUEST, "--mem", "0"])
    case("bad --mem: exit 2", rc == 2 and "--mem" in err, err)
    rc, out, err = run(["--kernel", TESTGUEST, "--vcpus", "65"])
    case("bad --vcpus: exit 2", rc == 2, err)
    rc, out, err = run([])
    case("no --kernel: exit 2", rc == 2 and "--kernel" in err, err)
    rc, out, err = run(["--kernel", TESTGUEST, "--disk", "/nonexistent.img"])
    case("missing disk: exit 1 with the path", rc == 1 and "/nonexistent.img" in err, err)
    rc, out, err = run(["--kernel", TESTGUEST, "--disk", disk + ",rw"])
    case("bad disk option: exit 2", rc == 2, err)
    p = subprocess.run([VMM, "check", "--json"], capture_output=True, timeout=60)
    case("check --json answers", p.returncode in (0, 1) and b'"engine"' in p.stdout,
         p.stdout.decode() + p.stderr.decode())

    for t in tmp:
        os.unlink(t)
    return case.finish()


if __name__ == "__main__":
    sys.exit(main())
