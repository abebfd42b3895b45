"""Kernel text symbols from a System.map or /proc/kallsyms, and the one a RIP is in."""
import bisect


class Symbols:
    def __init__(self, path):
        # kallsyms lines carry a fourth field ("[kvm_amd]") for module symbols.
        syms = []
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) in (3, 4) and parts[1] in "tTwW" and int(parts[0], 16):
                    syms.append((int(parts[0], 16), parts[2]))
        syms.sort()
        self.addrs = [a for a, _ in syms]
        self.names = [n for _, n in syms]

    def find(self, rip):
        """(name, offset) of the text symbol at or below rip, or None."""
        i = bisect.bisect_right(self.addrs, rip) - 1
        return (self.names[i], rip - self.addrs[i]) if i >= 0 else None
