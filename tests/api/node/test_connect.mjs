// The Connect client for Node (connect-es + connect-node, JSON codec) against a
// running `mitos-vmm serve` at $MITOS_BASE_URL (tests/api/run_node.py starts one),
// over HTTP/1.1 or, with MITOS_HTTP_VERSION=2, HTTP/2 without TLS (h2c).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { ConnectError, Code } from "@connectrpc/connect";
import { rest, forSandbox, newSandbox, sandboxClient } from "./serve_client.mjs";

let sid;
let client;

before(async () => {
  sid = await newSandbox("node");
  client = sandboxClient(process.env.MITOS_HTTP_VERSION === "2" ? "2" : "1.1");
});

after(async () => {
  if (sid) await rest("DELETE", "/v1/sandboxes/" + sid);
});

// Folds an ExecStream: stdout and stderr text and the ExecExit.
async function execAll(req) {
  let out = "";
  let err = "";
  let exit;
  for await (const m of client.execStream(req, forSandbox(sid))) {
    if (m.msg.case === "stdout") out += Buffer.from(m.msg.value).toString();
    if (m.msg.case === "stderr") err += Buffer.from(m.msg.value).toString();
    if (m.msg.case === "exit") exit = m.msg.value;
  }
  return { out, err, exit };
}

test("ExecStream streams stdout, stderr and the ExecExit", async () => {
  const r = await execAll({ command: "echo hello; echo oops >&2; exit 4" });
  assert.equal(r.out, "hello\n");
  assert.equal(r.err, "oops\n");
  assert.equal(r.exit.exitCode, 4);
  assert.ok(r.exit.execTimeMs > 0);
  assert.equal(r.exit.error, "");
});

test("ExecStream takes args, env and cwd, and carries binary bytes unchanged", async () => {
  const r = await execAll({ command: "printf", args: ["%s|", "a b", "c"] });
  assert.equal(r.out, "a b|c|");
  const e = await execAll({ command: "echo $FOO; pwd", env: [{ key: "FOO", value: "bar" }], cwd: "/etc" });
  assert.equal(e.out, "bar\n/etc\n");
  const chunks = [];
  for await (const m of client.execStream({ command: "head -c 300000 /dev/urandom | tee /tmp/r | sha256sum >&2; cat /tmp/r" },
    forSandbox(sid))) {
    if (m.msg.case === "stdout") chunks.push(Buffer.from(m.msg.value));
  }
  assert.equal(Buffer.concat(chunks).length, 300000);
});

test("ExecStream timeout ends the command with exit code 124", async () => {
  const r = await execAll({ command: "sleep 20", timeoutSeconds: 1 });
  assert.equal(r.exit.exitCode, 124);
});

test("RunCodeStream returns bytes, RunResult text and MIME data, RunError, exitCode", async () => {
  let text;
  let plain;
  let stdout = "";
  let exitCode;
  for await (const m of client.runCodeStream({ code: "import math\nprint('p')\nmath.sqrt(144)", timeoutSeconds: 60n },
    forSandbox(sid))) {
    if (m.msg.case === "stdout") stdout += Buffer.from(m.msg.value).toString();
    if (m.msg.case === "result") {
      text = m.msg.value.text;
      plain = Buffer.from(m.msg.value.data["text/plain"]).toString();
    }
    if (m.msg.case === "exitCode") exitCode = m.msg.value;
  }
  assert.equal(stdout, "p\n");
  assert.equal(text, "12.0");
  assert.equal(plain, "12.0");
  assert.equal(exitCode, 0);
  let error;
  for await (const m of client.runCodeStream({ code: "1/0" }, forSandbox(sid))) {
    if (m.msg.case === "error") error = m.msg.value;
  }
  assert.equal(error.name, "ZeroDivisionError");
  assert.ok(error.traceback.length > 0);
});

test("WriteFile (client stream) then ReadFile (server stream), byte for byte", async () => {
  const blob = randomBytes(1 << 20);
  async function* messages() {
    yield { msg: { case: "open", value: { path: "/workspace/blob.bin", mode: 0o644 } } };
    yield { msg: { case: "data", value: blob.subarray(0, 300000) } };
    yield { msg: { case: "data", value: blob.subarray(300000) } };
  }
  const res = await client.writeFile(messages(), forSandbox(sid));
  assert.equal(res.bytesWritten, BigInt(blob.length));
  const parts = [];
  for await (const m of client.readFile({ path: "/workspace/blob.bin" }, forSandbox(sid))) {
    if (m.data.length) parts.push(Buffer.from(m.data));
  }
  assert.ok(Buffer.concat(parts).equals(blob));
});

test("List (paged), Stat, Mkdir, Remove", async () => {
  await client.mkdir({ path: "/workspace/d/e" }, forSandbox(sid));
  await client.mkdir({ path: "/workspace/d" }, forSandbox(sid));
  for (const name of ["a.txt", "b.txt"]) {
    await client.writeFile((async function* () {
      yield { msg: { case: "open", value: { path: "/workspace/d/" + name } } };
      yield { msg: { case: "data", value: Buffer.from("x") } };
    })(), forSandbox(sid));
  }
  const page1 = await client.list({ parent: "/workspace/d", pageSize: 2 }, forSandbox(sid));
  assert.deepEqual(page1.entries.map((e) => e.name), ["a.txt", "b.txt"]);
  assert.equal(page1.nextPageToken, "2");
  const page2 = await client.list({ parent: "/workspace/d", pageSize: 2, pageToken: page1.nextPageToken },
    forSandbox(sid));
  assert.deepEqual(page2.entries.map((e) => [e.name, e.isDir]), [["e", true]]);
  assert.equal(page2.nextPageToken, "");
  const st = await client.stat({ path: "/workspace/d/a.txt" }, forSandbox(sid));
  assert.equal(st.size, 1n);
  assert.equal(st.isDir, false);
  assert.ok(st.modifiedAtUnix > 0n);
  await client.remove({ path: "/workspace/d", recursive: true }, forSandbox(sid));
  await assert.rejects(client.stat({ path: "/workspace/d" }, forSandbox(sid)),
    (e) => e instanceof ConnectError && e.code === Code.NotFound);
});

test("errors carry Connect codes; the cluster-only RPCs answer unimplemented", async () => {
  await assert.rejects(client.stat({ path: "/" }, forSandbox("no-such-sandbox")),
    (e) => e instanceof ConnectError && e.code === Code.NotFound);
  await assert.rejects(client.stat({ path: "/" }, forSandbox("bad id!")),
    (e) => e instanceof ConnectError && e.code === Code.InvalidArgument);
  await assert.rejects(
    (async () => {
      for await (const _ of client.readFile({ path: "/nope/nope" }, forSandbox(sid))) { /* drain */ }
    })(),
    (e) => e instanceof ConnectError && e.code === Code.NotFound);
  await assert.rejects(client.budget({}, forSandbox(sid)),
    (e) => e instanceof ConnectError && e.code === Code.Unimplemented);
});

test("Processes, Signal and Vitals decode as the proto's messages", async () => {
  await execAll({ command: "(exec -a node-sleeper sleep 300) >/dev/null 2>&1 &" });
  const list = await client.processes({}, forSandbox(sid));
  const sleeper = list.processes.find((p) => p.command === "sleep" || p.command === "node-sleeper");
  assert.ok(sleeper && sleeper.pid > 1 && typeof sleeper.rssBytes === "bigint", JSON.stringify(list.processes));
  await client.signal({ pid: sleeper.pid, signal: 9 }, forSandbox(sid));
  await assert.rejects(client.signal({ pid: 1, signal: 15 }, forSandbox(sid)),
    (e) => e instanceof ConnectError && e.code === Code.InvalidArgument);
  const ac = new AbortController();
  const samples = [];
  try {
    for await (const v of client.vitals({ intervalSeconds: 1 }, { ...forSandbox(sid), signal: ac.signal })) {
      samples.push(v);
      if (samples.length === 2) ac.abort();
    }
  } catch (e) {
    assert.ok(e instanceof ConnectError && e.code === Code.Canceled, String(e));
  }
  assert.equal(samples.length, 2);
  assert.ok(samples[0].sampledAtUnix > 0n && samples[0].memTotalBytes >= samples[0].memUsedBytes);
  assert.ok(samples[0].processCount >= 2);
});

test("Upload, Archive and Watch: a tree in as tar, back out as tar, its events by kind", async () => {
  // A one-file ustar archive, built here from the format.
  const header = Buffer.alloc(512);
  header.write("note.txt", 0);
  header.write("0000644\0", 100);
  header.write("0000000\0", 108);
  header.write("0000000\0", 116);
  header.write("00000000005\0", 124);
  header.write("14000000000\0", 136);
  header.write("        ", 148);
  header.write("0", 156);
  header.write("ustar\u000000", 257);
  let sum = 0;
  for (const b of header) sum += b;
  header.write(sum.toString(8).padStart(6, "0") + "\0 ", 148);
  const body = Buffer.alloc(512);
  body.write("hello");
  const tar = Buffer.concat([header, body, Buffer.alloc(1024)]);
  async function* requests() {
    yield { msg: { case: "open", value: { dest: "/workspace/up" } } };
    yield { msg: { case: "chunk", value: tar.subarray(0, 700) } };
    yield { msg: { case: "chunk", value: tar.subarray(700) } };
  }
  const res = await client.upload(requests(), forSandbox(sid));
  assert.equal(res.bytesWritten, BigInt(tar.length));

  const chunks = [];
  let eof = false;
  for await (const c of client.archive({ path: "/workspace/up", direction: 1 }, forSandbox(sid))) {
    chunks.push(Buffer.from(c.data));
    eof = eof || c.eof;
  }
  const back = Buffer.concat(chunks);
  assert.ok(eof, "the last chunk says eof");
  assert.equal(back.subarray(0, 8).toString(), "note.txt");
  assert.equal(back.subarray(512, 517).toString(), "hello");

  const ac = new AbortController();
  const events = [];
  const watching = (async () => {
    try {
      for await (const ev of client.watch({ path: "/workspace/up", recursive: true },
        { ...forSandbox(sid), signal: ac.signal })) {
        events.push(ev);
        if (ev.kind === 3) ac.abort(); // DELETE
      }
    } catch (e) {
      assert.ok(e instanceof ConnectError && e.code === Code.Canceled, String(e));
    }
  })();
  await new Promise((r) => setTimeout(r, 500));
  await execAll({ command: "mv /workspace/up/note.txt /workspace/up/moved.txt && rm /workspace/up/moved.txt" });
  await watching;
  assert.deepEqual(events.map((e) => [e.kind, e.path, e.newPath]), [
    [4, "/workspace/up/note.txt", "/workspace/up/moved.txt"], // RENAME
    [3, "/workspace/up/moved.txt", ""], // DELETE
  ]);
});
