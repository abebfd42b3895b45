#!/usr/bin/env python3
"""Starts `mitos-vmm serve` and runs the Node Connect client tests against it: every
RPC over HTTP/1.1 and again over HTTP/2 (h2c), then the bidirectional streams.
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
    rc = 0
    for version, script in (("1.1", "test_connect.mjs"), ("2", "test_connect.mjs"), ("2", "test_h2.mjs")):
        env = dict(os.environ, MITOS_BASE_URL="http://127.0.0.1:%d" % s.port, MITOS_HTTP_VERSION=version)
        print("== %s over HTTP/%s" % (script, version), flush=True)
        rc = subprocess.call(["node", "--test", script], cwd=node_dir, env=env, timeout=240) or rc
finally:
    s.cleanup()
sys.exit(rc)
