// Hostile and malformed input on the E2B surface, on the wire: every case gets a
// clear error and the server keeps serving (the sanitizer build runs this too).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import { Sandbox } from "e2b";

const url = process.env.E2B_SANDBOX_URL;
let sbx, token, traffic;
before(async () => {
  sbx = await Sandbox.create();
  const res = await fetch(process.env.E2B_API_URL + "/v2/sandboxes/" + sbx.sandboxId + "/connect", {
    method: "POST",
    headers: { "X-API-KEY": process.env.E2B_API_KEY, "Content-Type": "application/json" },
    body: "{}",
  });
  ({ envdAccessToken: token, trafficAccessToken: traffic } = await res.json());
  assert.ok(token && traffic);
});
after(async () => {
  if (sbx) await sbx.kill().catch(() => {});
});

function envd(extra = {}) {
  return { "E2b-Sandbox-Id": sbx.sandboxId, "E2b-Sandbox-Port": "49983", "X-Access-Token": token, ...extra };
}

async function alive() {
  assert.equal((await sbx.commands.run("echo alive")).stdout, "alive\n");
}

test("malformed multipart uploads are 400s", async () => {
  const cases = [
    ["multipart/form-data", "--x\r\n\r\n"],
    ["multipart/form-data; boundary=", "--x--"],
    ["multipart/form-data; boundary=" + "b".repeat(300), "--b--"],
    ["multipart/form-data; boundary=zz", "--zz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/tmp/h1\"\r\n\r\nno closing boundary"],
    ["multipart/form-data; boundary=zz", "--zz\r\n" + "X-Big: " + "h".repeat(9000) + "\r\n\r\ndata\r\n--zz--"],
    ["multipart/form-data; boundary=zz", "--zz\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n--zz--"],
    ["multipart/form-data; boundary=zz", "--zzGARBAGE"],
    ["multipart/form-data; boundary=zz", "--zz--"],
  ];
  for (const [ct, body] of cases) {
    const res = await fetch(url + "/files", { method: "POST", headers: envd({ "Content-Type": ct }), body });
    assert.equal(res.status, 400, ct + " " + JSON.stringify(body.slice(0, 60)) + " -> " + res.status);
    const j = await res.json();
    assert.equal(j.code, 400);
    assert.ok(j.message.length > 0);
  }
  await alive();
});

test("two parts for the same file, bad gzip, unknown encodings", async () => {
  const part = (n) => `--zz\r\nContent-Disposition: form-data; name="file"; filename="/tmp/same.txt"\r\n\r\n${n}\r\n`;
  let res = await fetch(url + "/files", { method: "POST", headers: envd({ "Content-Type": "multipart/form-data; boundary=zz" }), body: part(1) + part(2) + "--zz--\r\n" });
  assert.equal(res.status, 400);
  res = await fetch(url + "/files?path=/tmp/gz.bin", { method: "POST", headers: envd({ "Content-Type": "application/octet-stream", "Content-Encoding": "gzip" }), body: Buffer.from("not gzip at all") });
  assert.equal(res.status, 400);
  res = await fetch(url + "/files?path=/tmp/br.bin", { method: "POST", headers: envd({ "Content-Type": "application/octet-stream", "Content-Encoding": "br" }), body: "x" });
  assert.equal(res.status, 400);
  res = await fetch(url + "/files?path=/tmp/gz-ok.txt", { method: "POST", headers: envd({ "Content-Type": "application/octet-stream", "Content-Encoding": "gzip" }), body: gzipSync(Buffer.from("gzip ok")) });
  assert.equal(res.status, 200);
  assert.equal(await sbx.files.read("/tmp/gz-ok.txt"), "gzip ok");
  res = await fetch(url + "/files", { method: "POST", headers: envd({ "Content-Type": "application/octet-stream" }), body: "no path" });
  assert.equal(res.status, 400);
  await alive();
});

test("gzip uploads inflate as the sandbox takes them, up to the file limit", async () => {
  // 48 MiB of zeros in about 48 KiB: inflated as the agent writes, not all at once in
  // serve's memory; the file is whole.
  const mib = 1 << 20;
  let res = await fetch(url + "/files?path=/tmp/zeros.bin", { method: "POST", headers: envd({ "Content-Type": "application/octet-stream", "Content-Encoding": "gzip" }), body: gzipSync(Buffer.alloc(48 * mib)) });
  assert.equal(res.status, 200, await res.text());
  assert.equal((await sbx.commands.run("stat -c %s /tmp/zeros.bin && tr -d '\\0' < /tmp/zeros.bin | wc -c")).stdout, `${48 * mib}\n0\n`);
  // Past the file limit (serve's --max-file-body, 64 MiB) once inflated: a 413.
  res = await fetch(url + "/files?path=/tmp/bomb.bin", { method: "POST", headers: envd({ "Content-Type": "application/octet-stream", "Content-Encoding": "gzip" }), body: gzipSync(Buffer.alloc(80 * mib)) });
  assert.equal(res.status, 413);
  assert.match((await res.json()).message, /decompressed/);
  await sbx.commands.run("rm -f /tmp/zeros.bin /tmp/bomb.bin");
  await alive();
});

test("Connect calls with bad bodies, envelopes and content types", async () => {
  const post = (m, body, ct = "application/json") =>
    fetch(url + "/" + m, { method: "POST", headers: envd({ "Content-Type": ct, "Connect-Protocol-Version": "1" }), body });
  for (const [m, body, ct, code] of [
    ["filesystem.Filesystem/Stat", "{not json", "application/json", "invalid_argument"],
    ["filesystem.Filesystem/Stat", "[]", "application/json", "invalid_argument"],
    ["filesystem.Filesystem/Stat", "{}", "application/json", "invalid_argument"],
    ["filesystem.Filesystem/Stat", "{}", "text/plain", "invalid_argument"],
    ["filesystem.Filesystem/ListDir", '{"path":"/","depth":1000}', "application/json", "invalid_argument"],
    ["process.Process/SendSignal", '{"process":{"pid":1},"signal":"SIGNAL_SIGHUP"}', "application/json", "invalid_argument"],
    ["process.Process/SendInput", '{"process":{"pid":999999},"input":{"stdin":"aGk="}}', "application/json", "not_found"],
    ["process.Process/Nope", "{}", "application/json", "unimplemented"],
  ]) {
    const res = await post(m, body, ct);
    assert.notEqual(res.status, 200, m + " " + body);
    assert.equal((await res.json()).code, code, m + " " + body);
  }
  // A stream whose envelope length lies.
  const lying = Buffer.from([0, 0, 0, 0x10, 0, 0x7b, 0x7d]);
  const res = await post("process.Process/Start", lying, "application/connect+json");
  const buf = Buffer.from(await res.arrayBuffer());
  assert.equal(buf[0], 2, "an end-of-stream envelope");
  assert.match(buf.subarray(5).toString(), /invalid_argument/);
  await alive();
});

test("requests for sandboxes that do not exist, and bad ids", async () => {
  for (const id of ["no-such-sandbox", "../../etc", "", "x".repeat(200)]) {
    const res = await fetch(url + "/health", { headers: { "E2b-Sandbox-Id": id, "E2b-Sandbox-Port": "49983" } });
    assert.equal(res.status, 502, id);
    const ci = await fetch(url + "/contexts", { headers: { "E2b-Sandbox-Id": id, "E2b-Sandbox-Port": "49999", "Content-Type": "application/json" } });
    assert.equal(ci.status, 401, id + ": without a token, nothing about the sandbox is said");
  }
  const weird = await fetch(url + "/health", { headers: { "E2b-Sandbox-Id": sbx.sandboxId, "E2b-Sandbox-Port": "1" } });
  assert.equal(weird.status, 404);
  await alive();
});

test("code interpreter: bad requests", async () => {
  const ci = (path, body, method = "POST") =>
    fetch(url + path, { method, headers: { "E2b-Sandbox-Id": sbx.sandboxId, "E2b-Sandbox-Port": "49999", "Content-Type": "application/json", "X-Access-Token": token, "E2B-Traffic-Access-Token": traffic }, body });
  for (const body of ["{}", "not json", '{"code":"1","language":"cobol"}', '{"code":"1","language":"python","context_id":"x"}']) {
    const res = await ci("/execute", body);
    assert.equal(res.status, 400, body);
  }
  const noTraffic = await fetch(url + "/contexts", { headers: { "E2b-Sandbox-Id": sbx.sandboxId, "E2b-Sandbox-Port": "49999" } });
  assert.equal(noTraffic.status, 401, "the interpreter wants the traffic token");
  // Bash contexts live in serve's memory: a bounded number, each with a path-sized cwd.
  const huge = await ci("/contexts", JSON.stringify({ language: "bash", cwd: "/" + "a".repeat(5000) }));
  assert.equal(huge.status, 400, "a cwd longer than a path");
  const ids = [];
  let last;
  for (let i = 0; i < 40 && (last = await ci("/contexts", JSON.stringify({ language: "bash", cwd: "/tmp" }))).status === 200; i++)
    ids.push((await last.json()).id);
  assert.equal(ids.length, 32, "32 bash contexts");
  assert.equal(last.status, 429);
  for (const id of ids)
    assert.equal((await ci("/contexts/" + id, undefined, "DELETE")).status, 200);
  assert.equal((await ci("/contexts", JSON.stringify({ language: "bash" }))).status, 200, "room again");
  await alive();
});

// A small mutation fuzzer over the multipart parser: truncations, flipped bytes and
// random chunking of a valid body (a seeded PRNG, so a failure reproduces).
test("multipart mutations and random chunking: 200 or a 4xx, and nothing breaks", async () => {
  let seed = 12345;
  const rnd = (n) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const valid = Buffer.from(
    '--bnd\r\nContent-Disposition: form-data; name="file"; filename="/tmp/fz/a.txt"\r\nContent-Type: application/octet-stream\r\n\r\n' +
      "A".repeat(300) + "\r\n--bnd\r\n" +
      'Content-Disposition: form-data; name="file"; filename="/tmp/fz/b.txt"\r\n\r\n' + "B\r\n--bn".repeat(20) + "\r\n--bnd--\r\n",
  );
  for (let i = 0; i < 150; i++) {
    let body = Buffer.from(valid);
    const kind = i % 3;
    if (kind === 1) body = body.subarray(0, rnd(body.length));
    if (kind === 2) for (let k = 0; k < 1 + rnd(4); k++) body[rnd(body.length)] = rnd(256);
    const chunks = [];
    for (let off = 0; off < body.length; ) {
      const n = 1 + rnd(40);
      chunks.push(body.subarray(off, off + n));
      off += n;
    }
    const stream = new ReadableStream({
      pull(c) {
        if (chunks.length) c.enqueue(chunks.shift());
        else c.close();
      },
    });
    const res = await fetch(url + "/files", {
      method: "POST",
      headers: envd({ "Content-Type": "multipart/form-data; boundary=bnd" }),
      body: stream,
      duplex: "half",
    });
    // A flipped byte may land in a path (a read-only directory: 403); never a 5xx.
    assert.ok(res.status === 200 || (res.status >= 400 && res.status < 500), `case ${i} (kind ${kind}): ${res.status}`);
    if (kind === 0) {
      assert.equal(res.status, 200);
      assert.equal(await sbx.files.read("/tmp/fz/b.txt"), "B\r\n--bn".repeat(20));
    } else {
      await res.arrayBuffer();
    }
  }
  await alive();
});

test("oversized metadata and envVars are refused at create", async () => {
  const big = Object.fromEntries(Array.from({ length: 300 }, (_, i) => ["k" + i, "v"]));
  const huge = { blob: "x".repeat(70 * 1024) };
  for (const body of [{ metadata: big }, { metadata: huge }, { envVars: big }]) {
    const res = await fetch(process.env.E2B_API_URL + "/sandboxes", {
      method: "POST",
      headers: { "X-API-KEY": process.env.E2B_API_KEY, "Content-Type": "application/json" },
      body: JSON.stringify({ templateID: "base", ...body }),
    });
    assert.equal(res.status, 400, JSON.stringify(Object.keys(body)));
  }
  await alive();
});

test("snapshot names, templateIDs and ids that are not ones: 400s and 404s, nothing taken", async () => {
  const api = (method, path, body) => fetch(process.env.E2B_API_URL + path, {
    method,
    headers: { "X-API-KEY": process.env.E2B_API_KEY, "Content-Type": "application/json" },
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
  });
  const snap = "/sandboxes/" + sbx.sandboxId + "/snapshots";
  for (const body of [{ name: 123 }, { name: "../../etc" }, { name: "a/b" }, { name: "x".repeat(65) },
    { name: "ok:v1" }, { name: "" }, { name: "a:" }, "[1]", "{bad json"]) {
    const res = await api("POST", snap, body);
    assert.equal(res.status, 400, JSON.stringify(body));
    assert.equal(typeof (await res.json()).message, "string");
  }
  for (const tid of ["../x", "base:v2", "base:", ":default", "a/b:default", "x".repeat(65)])
    assert.equal((await api("POST", "/sandboxes", { templateID: tid })).status, 400, tid);
  for (const id of ["no-such:default", "%2e%2e%2fetc", "a%2Fb", "x".repeat(120)])
    assert.equal((await api("DELETE", "/templates/" + id)).status, 404, id);
  for (const q of ["limit=0", "limit=1001", "limit=x", "limit=1x"])
    assert.equal((await api("GET", "/snapshots?" + q)).status, 400, q);
  assert.deepEqual(await (await api("GET", "/snapshots?sandboxID=" + sbx.sandboxId)).json(), []);
  await alive();
});

test("autoResume that is not {enabled: bool}, or without autoPause, is refused at create", async () => {
  for (const body of [{ autoResume: true }, { autoResume: { enabled: "yes" } }, { autoResume: [] },
    { autoResume: {} }, { autoResume: { enabled: true } }, { autoResume: { enabled: true }, autoPause: false }]) {
    const res = await fetch(process.env.E2B_API_URL + "/sandboxes", {
      method: "POST",
      headers: { "X-API-KEY": process.env.E2B_API_KEY, "Content-Type": "application/json" },
      body: JSON.stringify({ templateID: "base", ...body }),
    });
    assert.equal(res.status, 400, JSON.stringify(body));
    assert.match((await res.json()).message, /autoResume/);
  }
  await alive();
});
