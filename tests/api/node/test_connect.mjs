// The Connect client for Node (connect-es + connect-node, JSON codec) against a
// running `mitos-vmm serve` at $MITOS_BASE_URL (tests/api/run_node.py starts one).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { createPromiseClient, ConnectError, Code } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { SandboxService } from "./sandbox_service.mjs";

const base = process.env.MITOS_BASE_URL;
let sid;
let client;

async function rest(method, path, body) {
  const res = await fetch(base + path, {
    method,
    headers: { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

function forSandbox(id) {
  return { headers: { "X-Sandbox-Id": id } };
}

before(async () => {
  assert.ok(base, "MITOS_BASE_URL is set");
  await rest("POST", "/v1/templates", { name: "python" });
  const r = await rest("POST", "/v1/fork", { template: "python" });
  assert.equal(r.status, 201);
  sid = r.body.sandboxes[0].id;
  const transport = createConnectTransport({
    baseUrl: base,
    httpVersion: "1.1",
    useBinaryFormat: false,
    jsonOptions: { ignoreUnknownFields: true },
  });
  client = createPromiseClient(SandboxService, transport);
});

after(async () => {
  if (sid) await rest("DELETE", "/v1/sandboxes/" + sid);
});

test("ExecStream streams stdout, stderr and the exit", async () => {
  let out = "";
  let err = "";
  let end;
  let pid = 0;
  for await (const m of client.execStream({ command: "echo hello; echo oops >&2; exit 4" }, forSandbox(sid))) {
    if (m.start) pid = m.start.pid;
    out += Buffer.from(m.stdout).toString();
    err += Buffer.from(m.stderr).toString();
    if (m.end) end = m.end;
  }
  assert.ok(pid > 0);
  assert.equal(out, "hello\n");
  assert.equal(err, "oops\n");
  assert.equal(end.exitCode, 4);
  assert.equal(end.exited, true);
});

test("ExecStream carries binary bytes and stdin unchanged", async () => {
  const input = randomBytes(100000);
  const chunks = [];
  for await (const m of client.execStream({ command: "cat", stdin: input }, forSandbox(sid))) {
    if (m.stdout.length) chunks.push(Buffer.from(m.stdout));
  }
  assert.ok(Buffer.concat(chunks).equals(input));
});

test("ExecStream timeout ends with deadline_exceeded", async () => {
  let end;
  await assert.rejects(
    (async () => {
      for await (const m of client.execStream({ command: "sleep 20", timeout: 1 }, forSandbox(sid))) {
        if (m.end) end = m.end;
      }
    })(),
    (e) => e instanceof ConnectError && e.code === Code.DeadlineExceeded,
  );
  assert.equal(end.timedOut, true);
});

test("RunCodeStream returns rich results", async () => {
  let text;
  let stdout = "";
  for await (const m of client.runCodeStream({ code: "import math\nprint('p')\nmath.sqrt(144)" }, forSandbox(sid))) {
    stdout += m.stdout;
    if (m.result) text = m.result.data.toJson()["text/plain"];
  }
  assert.equal(stdout, "p\n");
  assert.equal(text, "12.0");
});

test("WriteFile (client stream) then ReadFile (server stream), byte for byte", async () => {
  const blob = randomBytes(1 << 20);
  async function* messages() {
    yield { path: "/workspace/blob.bin", data: blob.subarray(0, 300000) };
    yield { data: blob.subarray(300000, 700000) };
    yield { data: blob.subarray(700000) };
  }
  let res;
  try {
    res = await client.writeFile(messages(), forSandbox(sid));
  } catch (e) {
    // connect-node cannot stream a request body over HTTP/1.1 on every
    // version; fall back to one message, which is the same RPC.
    if (!(e instanceof ConnectError) || e.code !== Code.Unimplemented) throw e;
    res = await client.writeFile((async function* () { yield { path: "/workspace/blob.bin", data: blob }; })(),
      forSandbox(sid));
  }
  assert.equal(Number(res.bytes), blob.length);
  const parts = [];
  for await (const m of client.readFile({ path: "/workspace/blob.bin" }, forSandbox(sid))) {
    if (m.data.length) parts.push(Buffer.from(m.data));
  }
  assert.ok(Buffer.concat(parts).equals(blob));
});

test("List, Stat, Mkdir, Rename, Remove", async () => {
  await client.mkdir({ path: "/workspace/d" }, forSandbox(sid));
  async function* one() { yield { path: "/workspace/d/a.txt", data: Buffer.from("x") }; }
  await client.writeFile(one(), forSandbox(sid));
  const list = await client.list({ path: "/workspace/d" }, forSandbox(sid));
  assert.deepEqual(list.entries.map((e) => e.name), ["a.txt"]);
  const st = await client.stat({ path: "/workspace/d/a.txt" }, forSandbox(sid));
  assert.equal(Number(st.entry.size), 1);
  assert.equal(st.entry.type, "file");
  await client.rename({ from: "/workspace/d/a.txt", to: "/workspace/d/b.txt" }, forSandbox(sid));
  await client.remove({ path: "/workspace/d", recursive: true }, forSandbox(sid));
  await assert.rejects(client.stat({ path: "/workspace/d" }, forSandbox(sid)),
    (e) => e instanceof ConnectError && e.code === Code.NotFound);
});

test("errors carry Connect codes", async () => {
  await assert.rejects(client.stat({ path: "/" }, forSandbox("no-such-sandbox")),
    (e) => e instanceof ConnectError && e.code === Code.NotFound);
  await assert.rejects(client.stat({ path: "/" }, forSandbox("bad id!")),
    (e) => e instanceof ConnectError && e.code === Code.InvalidArgument);
  await assert.rejects(
    (async () => {
      for await (const _ of client.readFile({ path: "/nope/nope" }, forSandbox(sid))) { /* drain */ }
    })(),
    (e) => e instanceof ConnectError && e.code === Code.NotFound);
});
