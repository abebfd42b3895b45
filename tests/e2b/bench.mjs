// The measurements of tools/bench-e2b (see there); run by tests/e2b/run.py --bench.
import { Sandbox } from "e2b";

const runs = Number(process.argv[2] || 30);
const base = process.env.E2B_API_URL;
const auth = { Authorization: "Bearer " + process.env.E2B_API_KEY };

function pct(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.round((p / 100) * (s.length - 1)))];
}
function report(name, xs) {
  console.log(`${name}-p50: ${pct(xs, 50).toFixed(3)} ms`);
  console.log(`${name}-p99: ${pct(xs, 99).toFixed(3)} ms`);
}

function envelope(obj) {
  const b = Buffer.from(JSON.stringify(obj));
  const h = Buffer.alloc(5);
  h.writeUInt32BE(b.length, 1);
  return Buffer.concat([h, b]);
}
async function mitosExec(id) {
  const res = await fetch(base + "/sandbox.v1.Sandbox/ExecStream", {
    method: "POST",
    headers: { ...auth, "Content-Type": "application/connect+json", "X-Sandbox-Id": id },
    // What the E2B SDK runs for commands.run("true"): a login shell, whose profile
    // scripts cost the same on both sides.
    body: envelope({ command: "/bin/bash", args: ["-l", "-c", "true"] }),
  });
  const body = Buffer.from(await res.arrayBuffer());
  // An exit message without an exitCode (0 is omitted), then the end of stream {}.
  let off = 0, exit, last;
  while (off + 5 <= body.length) {
    const n = body.readUInt32BE(off + 1);
    last = [body[off], body.subarray(off + 5, off + 5 + n).toString()];
    if (last[0] === 0 && last[1].startsWith('{"exit"')) exit = JSON.parse(last[1]).exit;
    off += 5 + n;
  }
  if (!exit || exit.exitCode || !last || last[0] !== 2 || last[1] !== "{}")
    throw new Error("exec failed: " + JSON.stringify([exit, last]));
}
let serial = 0;
async function mitosCreate() {
  const res = await fetch(base + "/v1/fork", {
    method: "POST",
    headers: { ...auth, "Content-Type": "application/json" },
    body: JSON.stringify({ template: "base", id: `bench-${process.pid}-${++serial}` }),
  });
  if (res.status !== 200) throw new Error("fork: " + res.status + " " + (await res.text()));
  return (await res.json()).id;
}
async function mitosKill(id) {
  await fetch(base + "/v1/sandboxes/" + id, { method: "DELETE", headers: auth });
}

// The template exists before timing starts (E2B's "base" is made on first use).
await (await Sandbox.create()).kill();
const e2b = [], mitos = [], e2bCmd = [], mitosCmd = [];
for (let i = 0; i < runs; i++) {
  // Interleaved, so load on this shared machine hits both alike.
  let t = performance.now();
  const sbx = await Sandbox.create();
  await sbx.commands.run("true");
  e2b.push(performance.now() - t);
  t = performance.now();
  await sbx.commands.run("true");
  e2bCmd.push(performance.now() - t);
  await sbx.kill();

  t = performance.now();
  const id = await mitosCreate();
  await mitosExec(id);
  mitos.push(performance.now() - t);
  t = performance.now();
  await mitosExec(id);
  mitosCmd.push(performance.now() - t);
  await mitosKill(id);
}
report("e2b-create-to-first-command", e2b);
report("mitos-create-to-first-command", mitos);
report("e2b-command", e2bCmd);
report("mitos-command", mitosCmd);
console.log(`e2b-sdk-overhead-p50: ${(pct(e2b, 50) - pct(mitos, 50)).toFixed(3)} ms`);

// Snapshots of a sandbox holding 64 MiB of its own data: the take (the process engine
// pauses the sandbox meanwhile) and a sandbox started from it to its first command.
const src = await Sandbox.create();
await src.commands.run("head -c 64M /dev/urandom > /home/user/blob");
const snapTake = [], snapStart = [];
for (let i = 0; i < runs; i++) {
  let t = performance.now();
  const snap = await src.createSnapshot();
  snapTake.push(performance.now() - t);
  t = performance.now();
  const sbx = await Sandbox.create(snap.snapshotId);
  await sbx.commands.run("true");
  snapStart.push(performance.now() - t);
  await sbx.kill();
  await Sandbox.deleteSnapshot(snap.snapshotId);
}
await src.kill();
report("e2b-snapshot-64mib", snapTake);
report("e2b-create-from-snapshot-to-first-command", snapStart);

// Pause, then connect to the first command: with memory (a freeze and a thaw) and
// filesystem-only (its processes end; connect boots it afresh from its files).
for (const keepMemory of [true, false]) {
  const sbx = await Sandbox.create();
  const pause = [], resume = [];
  for (let i = 0; i < runs; i++) {
    let t = performance.now();
    await sbx.pause({ keepMemory });
    pause.push(performance.now() - t);
    t = performance.now();
    const again = await Sandbox.connect(sbx.sandboxId);
    await again.commands.run("true");
    resume.push(performance.now() - t);
  }
  await sbx.kill();
  const kind = keepMemory ? "memory" : "files-only";
  report(`e2b-pause-${kind}`, pause);
  report(`e2b-connect-after-pause-${kind}-to-first-command`, resume);
}
console.log(`runs: ${runs}`);
