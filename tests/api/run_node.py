#!/usr/bin/env python3
"""Starts `mitos-vmm serve` and runs the Node Connect client test against it.
usage: run_node.py MITOS_VMM MITOS_AGENT NODE_DIR"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mitos_test import Server  # noqa: E402

vmm, agent, node_dir = sys.argv[1:4]
if os.geteuid() != 0:
    print("SKIP: the process engine needs root")
    sys.exit(77)
if not os.path.isdir(os.path.join(node_dir, "node_modules", "@connectrpc")):
    print("SKIP: run tools/setup (npm ci in tests/api/node) first")
    sys.exit(77)
s = Server(vmm, agent)
try:
    env = dict(os.environ, MITOS_BASE_URL="http://127.0.0.1:%d" % s.port)
    rc = subprocess.call(["node", "--test", "test_connect.mjs"], cwd=node_dir, env=env, timeout=240)
finally:
    s.cleanup()
sys.exit(rc)
