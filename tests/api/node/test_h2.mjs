// HTTP/2 without TLS (h2c, prior knowledge) against a running `mitos-vmm serve` at
// $MITOS_BASE_URL (tests/api/run_node.py): the bidirectional streams of
// sandbox.v1.Sandbox (Exec, RunCode, PortForward) with the Connect client for
// Node, and the transport itself with node:http2.
import { test, before, after } from "node:test";
import http2 from "node:http2";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { ConnectError, Code } from "@connectrpc/connect";
import { base, rest, forSandbox, newSandbox, sandboxClient } from "./serve_client.mjs";

let sid;
let client;
const text = (b) => Buffer.from(b).toString();

before(async () => {
  sid = await newSandbox("bidi");
  client = sandboxClient("2");
});

after(async () => {
  if (sid) await rest("DELETE", "/v1/sandboxes/" + sid);
});

// A request stream the test drives: push() messages, end() it.
function requests() {
  const queue = [];
  let wake;
  let ended = false;
  return {
    push(m) { queue.push(m); if (wake) wake(); },
    end() { ended = true; if (wake) wake(); },
    async *[Symbol.asyncIterator]() {
      for (;;) {
        while (queue.length) yield queue.shift();
        if (ended) return;
        await new Promise((res) => { wake = res; });
        wake = undefined;
      }
    },
  };
}

test("Exec: stdin fed while the command runs, stdout and stderr apart, then the exit", async () => {
  const req = requests();
  req.push({ msg: { case: "open", value: { command: "read a; echo got:$a; read b; echo then:$b >&2; exit 3" } } });
  req.push({ msg: { case: "stdin", value: Buffer.from("one\n") } });
  let out = "";
  let err = "";
  let exit;
  for await (const m of client.exec(req, forSandbox(sid))) {
    if (m.msg.case === "stdout") {
      out += text(m.msg.value);
      // The answer to the first line came back while the request is still open.
      if (out === "got:one\n") req.push({ msg: { case: "stdin", value: Buffer.from("two\n") } });
    }
    if (m.msg.case === "stderr") err += text(m.msg.value);
    if (m.msg.case === "exit") exit = m.msg.value;
  }
  req.end();
  assert.equal(out, "got:one\n");
  assert.equal(err, "then:two\n");
  assert.equal(exit.exitCode, 3);
  assert.ok(exit.execTimeMs > 0);
});

test("Exec: stdinClose (or the end of the request) ends the process's input", async () => {
  const blob = randomBytes(200000);
  async function* msgs() {
    yield { msg: { case: "open", value: { command: "sha256sum | cut -c1-64" } } };
    yield { msg: { case: "stdin", value: blob.subarray(0, 70000) } };
    yield { msg: { case: "stdin", value: blob.subarray(70000) } };
    yield { msg: { case: "stdinClose", value: true } };
  }
  let out = "";
  for await (const m of client.exec(msgs(), forSandbox(sid))) if (m.msg.case === "stdout") out += text(m.msg.value);
  const { createHash } = await import("node:crypto");
  assert.equal(out.trim(), createHash("sha256").update(blob).digest("hex"));
  out = "";
  async function* ended() {
    yield { msg: { case: "open", value: { command: "wc -c" } } };
    yield { msg: { case: "stdin", value: Buffer.from("12345") } };
  }
  for await (const m of client.exec(ended(), forSandbox(sid))) if (m.msg.case === "stdout") out += text(m.msg.value);
  assert.equal(out.trim(), "5");
});

test("Exec with pty: a terminal of the asked size, resized while it runs", async () => {
  const req = requests();
  req.push({ msg: { case: "open", value: { command: "stty size; read x; stty size; tty", pty: { size: { cols: 100, rows: 30 } } } } });
  let out = "";
  let exit;
  let resized = false;
  for await (const m of client.exec(req, forSandbox(sid))) {
    if (m.msg.case === "stdout") out += text(m.msg.value);
    if (!resized && out.includes("30 100")) {
      resized = true;
      req.push({ msg: { case: "resize", value: { cols: 120, rows: 40 } } });
      req.push({ msg: { case: "stdin", value: Buffer.from("\r") } });
    }
    if (m.msg.case === "exit") exit = m.msg.value;
  }
  req.end();
  assert.match(out, /30 100/);
  assert.match(out, /40 120/);
  assert.match(out, /\/dev\/pts\//);
  assert.equal(exit.exitCode, 0);
});

test("RunCode: output, rich result and exitCode; later stdin is taken and dropped", async () => {
  async function* msgs() {
    yield { msg: { case: "open", value: { code: "print('p')\n6*7", timeoutSeconds: 60n } } };
    yield { msg: { case: "stdin", value: Buffer.from("ignored\n") } };
  }
  let stdout = "";
  let result;
  let exitCode;
  for await (const m of client.runCode(msgs(), forSandbox(sid))) {
    if (m.msg.case === "stdout") stdout += text(m.msg.value);
    if (m.msg.case === "result") result = m.msg.value;
    if (m.msg.case === "exitCode") exitCode = m.msg.value;
  }
  assert.equal(stdout, "p\n");
  assert.equal(result.text, "42");
  assert.equal(exitCode, 0);
});

test("PortForward: bytes both ways to a port inside the sandbox, then a close frame", async () => {
  const server = "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n" +
    "s.bind(('127.0.0.1',8765))\ns.listen()\nc,_=s.accept()\nd=b''\nwhile not d.endswith(b'!'):\n d+=c.recv(100)\n" +
    "c.sendall(d.upper())\nc.close()\n";
  for await (const _ of client.execStream({
    command: "printf '%s' \"$SRV\" > /tmp/srv.py; (python3 /tmp/srv.py >/dev/null 2>&1 &); " +
      "for i in $(seq 100); do grep -qi ':223D ' /proc/net/tcp && exit 0; sleep 0.05; done; exit 1",
    env: [{ key: "SRV", value: server }],
  }, forSandbox(sid))) { /* until it listens */ }
  const req = requests();
  req.push({ msg: { case: "open", value: { port: 8765 } } });
  req.push({ msg: { case: "data", value: Buffer.from("hello, ") } });
  req.push({ msg: { case: "data", value: Buffer.from("port!") } });
  let got = "";
  let closed = false;
  for await (const m of client.portForward(req, forSandbox(sid))) {
    if (m.msg.case === "data") got += text(m.msg.value);
    if (m.msg.case === "close") closed = true;
  }
  req.end();
  assert.equal(got, "HELLO, PORT!");
  assert.ok(closed);
});

test("errors: no open first, a port nothing listens on, a missing sandbox", async () => {
  async function* noOpen() { yield { msg: { case: "stdin", value: Buffer.from("x") } }; }
  await assert.rejects((async () => { for await (const _ of client.exec(noOpen(), forSandbox(sid))); })(),
    (e) => e instanceof ConnectError && e.code === Code.InvalidArgument && /open/.test(e.message));
  async function* closedPort() { yield { msg: { case: "open", value: { port: 1 } } }; }
  await assert.rejects((async () => { for await (const _ of client.portForward(closedPort(), forSandbox(sid))); })(),
    (e) => e instanceof ConnectError && e.code === Code.Unavailable, "nothing listens on port 1");
  async function* open() { yield { msg: { case: "open", value: { code: "1" } } }; }
  await assert.rejects((async () => { for await (const _ of client.runCode(open(), forSandbox("no-such-sandbox"))); })(),
    (e) => e instanceof ConnectError && e.code === Code.NotFound);
});

test("over HTTP/1.1 a bidirectional stream is refused with 505, as connect-go refuses it", async () => {
  const res = await fetch(base + "/sandbox.v1.Sandbox/Exec", {
    method: "POST",
    headers: { "Content-Type": "application/connect+json", "X-Sandbox-Id": sid },
    body: Buffer.from([0, 0, 0, 0, 2, 0x7b, 0x7d]),
  });
  assert.equal(res.status, 505);
  assert.equal((await res.json()).error.code, "http_version_not_supported");
});

// One request on an HTTP/2 session: status, headers and body.
function h2request(session, headers, body) {
  return new Promise((resolve, reject) => {
    const req = session.request(headers);
    const parts = [];
    let head;
    req.on("response", (h) => { head = h; });
    req.on("data", (d) => parts.push(d));
    req.on("end", () => resolve({ status: head[":status"], headers: head, body: Buffer.concat(parts).toString() }));
    req.on("error", reject);
    req.end(body);
  });
}

test("HTTP/2 transport: REST routes, many streams at once, refusals of what needs HTTP/1.1", async () => {
  const session = http2.connect(base);
  try {
    const health = await h2request(session, { ":path": "/v1/health" });
    assert.equal(health.status, 200);
    assert.equal(JSON.parse(health.body).status, "ok");
    const many = await Promise.all(Array.from({ length: 60 }, () => h2request(session, { ":path": "/v1/sandboxes" })));
    assert.ok(many.every((r) => r.status === 200 && JSON.parse(r.body).some((x) => x.id === sid)));
    const nf = await h2request(session, { ":path": "/v1/nope" });
    assert.equal(nf.status, 404);
    assert.equal(JSON.parse(nf.body).error.code, "not_found");
    const big = await h2request(session, { ":method": "POST", ":path": "/v1/templates", "content-type": "application/json" },
      Buffer.alloc(2 << 20, 0x20));
    assert.equal(big.status, 413);
    const ws = await h2request(session, { ":path": "/sandbox.v1.Sandbox/Exec?sandbox=" + sid });
    assert.equal(ws.status, 505);
    assert.equal(JSON.parse(ws.body).error.code, "http_version_not_supported");
    // A stream the client resets mid-answer: the server goes on serving the others.
    const req = session.request({ ":method": "POST", ":path": "/sandbox.v1.Sandbox/ExecStream",
      "content-type": "application/connect+json", "x-sandbox-id": sid });
    const msg = Buffer.from(JSON.stringify({ command: "yes | head -c 50000000" }));
    const env = Buffer.alloc(5);
    env.writeUInt32BE(msg.length, 1);
    req.end(Buffer.concat([env, msg]));
    await new Promise((res) => req.once("data", res));
    req.close(http2.constants.NGHTTP2_CANCEL);
    const after = await h2request(session, { ":path": "/v1/health" });
    assert.equal(after.status, 200);
  } finally {
    session.close();
  }
});
