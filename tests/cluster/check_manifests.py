#!/usr/bin/env python3
"""What can be checked of deploy/kubernetes without a cluster: every document
parses, the objects docs/cluster.md relies on are there and wired together (the
headless Service selects the DaemonSet, /dev/kvm and the state dir are hostPaths,
probes, drain in preStop, resource requests), and the embedded scripts pass
`bash -n`.

usage: check_manifests.py DEPLOY_KUBERNETES_DIR"""
import os
import subprocess
import sys
import tempfile

try:
    import yaml
except ImportError:
    print("SKIP: python3-yaml is not installed (tools/setup installs it)")
    sys.exit(77)

d = sys.argv[1]
objs = {}
for f in sorted(os.listdir(d)):
    if f.endswith(".yaml"):
        with open(os.path.join(d, f)) as fh:
            for doc in yaml.safe_load_all(fh):
                objs[(doc["kind"], doc["metadata"]["name"])] = doc


def need(cond, what):
    if not cond:
        print("FAIL: " + what)
        sys.exit(1)


need(("Namespace", "mitos") in objs, "the mitos namespace")
svc = objs.get(("Service", "mitos-nodes"))
ds = objs.get(("DaemonSet", "mitos-node"))
need(svc and svc["spec"].get("clusterIP") == "None", "a headless Service mitos-nodes")
need(svc["spec"].get("publishNotReadyAddresses") is True, "draining nodes stay resolvable")
need(ds and ds["spec"]["template"]["metadata"]["labels"].items() >= svc["spec"]["selector"].items(),
     "the Service selects the DaemonSet's pods")
pod = ds["spec"]["template"]["spec"]
c = pod["containers"][0]
hostpaths = {v["hostPath"]["path"]: v["name"] for v in pod["volumes"] if "hostPath" in v}
need("/dev/kvm" in hostpaths and "/var/lib/mitos" in hostpaths, "/dev/kvm and the state dir as hostPaths")
mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
need(mounts.get(hostpaths["/dev/kvm"]) == "/dev/kvm", "/dev/kvm mounted")
need(c.get("readinessProbe") and c.get("livenessProbe"), "readiness and liveness probes")
need("requests" in c.get("resources", {}), "resource requests")
need("USR1" in " ".join(c["lifecycle"]["preStop"]["exec"]["command"]), "preStop drains with SIGUSR1")
need(pod.get("nodeSelector"), "nodes only on labelled KVM hosts")
dep = objs.get(("Deployment", "mitos-router"))
need(dep and "requests" in dep["spec"]["template"]["spec"]["containers"][0].get("resources", {}),
     "the router Deployment with resource requests")
need(objs.get(("Service", "mitos")), "the router Service")
scripts = 0
for (kind, name), o in objs.items():
    if kind != "ConfigMap":
        continue
    for key, text in o["data"].items():
        with tempfile.NamedTemporaryFile("w", suffix=".sh") as t:
            t.write(text)
            t.flush()
            r = subprocess.run(["bash", "-n", t.name], capture_output=True, text=True)
            need(r.returncode == 0, "bash -n %s/%s: %s" % (name, key, r.stderr))
        scripts += 1
need("mitos-nodes" in objs[("ConfigMap", "mitos-router")]["data"]["run.sh"], "the router discovers mitos-nodes")
print("ok: %d objects, %d scripts" % (len(objs), scripts))
