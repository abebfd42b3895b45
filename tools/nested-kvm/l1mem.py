"""L1's memory as QEMU holds it, for gdb scripts attached to the nested machine's QEMU
(cpus, catch-triple-fault). Reads go straight to QEMU's RAM block with gdb's memory
reads: no function of QEMU's is called, so a stopped QEMU is never run inside and a
detach leaves it exactly as it was."""
import struct

import gdb

ADDR = 0x000ffffffffff000  # the address bits of a page-table entry
HF2_NPT_MASK = 1 << 6  # target/i386/cpu.h: L2 runs under nested paging
HF_GUEST_MASK = 1 << 21  # in L2 (SVM intercepts active)
_mem = gdb.selected_inferior()


def _pc_ram():
    b = gdb.parse_and_eval("ram_list.blocks.lh_first")
    while int(b):
        if b["idstr"].string() == "pc.ram":
            return int(b["host"]), int(b["used_length"])
        b = b["next"]["le_next"]
    raise gdb.GdbError("QEMU has no pc.ram block")


HOST, SIZE = _pc_ram()
# q35 puts the first 2 GiB (all of it when under 2.75 GiB) below 4 GiB, the rest above.
_LOW = 0x80000000 if SIZE >= 0xB0000000 else SIZE


def l1_read(gpa, n):
    """n bytes of L1's physical memory at gpa (within one page), or None."""
    off = gpa if gpa < _LOW else gpa - (1 << 32) + _LOW if gpa >= 1 << 32 else None
    if off is None or off + n > SIZE:
        return None
    return bytes(_mem.read_memory(HOST + off, n))


def l1_qword(gpa):
    b = l1_read(gpa, 8)
    return None if b is None else struct.unpack("<Q", b)[0]


def walk(root, va, read, log, indent):
    """4-level walk from root; read(gpa) gives an entry or None. Returns the address
    and appends each step to log."""
    table = root & ADDR
    for level, shift in ((4, 39), (3, 30), (2, 21), (1, 12)):
        at = table + ((va >> shift) & 511) * 8
        e = read(at)
        if e is None:
            log.append(f"{indent}level {level} entry at {at:#x}: unreadable")
            return None
        log.append(f"{indent}level {level} entry at {at:#x} = {e:#x}")
        if not e & 1:
            log.append(f"{indent}-> not present")
            return None
        if level in (3, 2) and e & 0x80:
            return (e & ADDR & ~((1 << shift) - 1)) | (va & ((1 << shift) - 1))
        table = e & ADDR
    return table | (va & 0xFFF)
