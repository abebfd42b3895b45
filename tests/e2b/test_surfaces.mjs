// One sandbox, two surfaces: an E2B sandbox is forked through the Mitos API and
// its children are reached with Sandbox.connect; a Mitos sandbox is reached
// through E2B; raw protocol details the SDK relies on.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Sandbox } from "e2b";
import http from "node:http";

const base = process.env.E2B_API_URL;
const auth = { Authorization: "Bearer " + process.env.E2B_API_KEY, "Content-Type": "application/json" };
const made = [];
after(async () => {
  for (const id of made) await Sandbox.kill(id).catch(() => {});
});

test("fork an E2B sandbox through /v1/fork and connect to the children", async () => {
  const sbx = await Sandbox.create();
  made.push(sbx.sandboxId);
  // On the sandbox's disk, which a fork copies, as root: E2B's default user may not
  // write /opt.
  await sbx.files.write("/opt/parent.txt", "from the parent", { user: "root" });
  await sbx.files.write("/tmp/parent.txt", "in /tmp too");
  const kids = [];
  for (const n of [1, 2]) {
    const res = await fetch(base + "/v1/sandboxes/" + sbx.sandboxId + "/fork", { method: "POST", headers: auth,
      body: JSON.stringify({ id: `fork${n}-${process.pid}`, pause_source: true }) });
    assert.equal(res.status, 200);
    kids.push((await res.json()).id);
  }
  made.push(...kids);
  for (const id of kids) {
    const child = await Sandbox.connect(id);
    assert.equal(await child.files.read("/opt/parent.txt"), "from the parent");
    assert.equal(await child.files.read("/tmp/parent.txt"), "in /tmp too");
    await child.files.write("/opt/child.txt", id, { user: "root" });
  }
  assert.equal(await sbx.files.exists("/opt/child.txt"), false, "children do not share files with the parent (the process engine forks the writable layer)");
});

test("a sandbox made with the Mitos API is an E2B sandbox too", async () => {
  await fetch(base + "/v1/templates", { method: "POST", headers: auth, body: JSON.stringify({ id: "python" }) });
  const res = await fetch(base + "/v1/fork", { method: "POST", headers: auth,
    body: JSON.stringify({ template: "python", id: `mitos-${process.pid}` }) });
  assert.equal(res.status, 200);
  const id = (await res.json()).id;
  made.push(id);
  const sbx = await Sandbox.connect(id);
  assert.equal((await sbx.commands.run("echo via-e2b")).stdout, "via-e2b\n");
  const info = await Sandbox.getInfo(id);
  assert.equal(info.templateId, "python");
});

test("control-plane errors carry E2B's {code, message} body", async () => {
  const key = { "X-API-KEY": process.env.E2B_API_KEY };
  const missing = await fetch(base + "/sandboxes/no-such-sandbox", { headers: key });
  assert.equal(missing.status, 404);
  assert.deepEqual(Object.keys(await missing.json()).sort(), ["code", "message"]);
  const badKey = await fetch(base + "/v2/sandboxes", { headers: { "X-API-KEY": "wrong" } });
  assert.equal(badKey.status, 401);
  assert.equal((await badKey.json()).code, 401);
  const badBody = await fetch(base + "/v2/sandboxes", { method: "POST", headers: { ...key, "Content-Type": "application/json" }, body: "{\"timeout\": \"soon\"}" });
  assert.equal(badBody.status, 400);
  // startedAfter as the Python SDK sends it (an aware datetime's isoformat), and refused.
  const future = encodeURIComponent("2999-01-02T03:04:05.123456+02:00");
  const none = await fetch(base + "/v2/sandboxes?startedAfter=" + future, { headers: key });
  assert.equal(none.status, 200);
  assert.deepEqual(await none.json(), []);
  const all = await fetch(base + "/v2/sandboxes?startedAfter=" + encodeURIComponent("2000-01-01T00:00:00+00:00"), { headers: key });
  assert.ok((await all.json()).length >= 1);
  for (const q of ["startedAfter=yesterday", "order=sideways"]) {
    const bad = await fetch(base + "/v2/sandboxes?" + q, { headers: key });
    assert.equal(bad.status, 400, q);
  }
  const noTpl = await Sandbox.create("no-such-template").then(() => null, (e) => e);
  assert.ok(noTpl, "an unknown template is refused");
});

// The Python SDK's calls without a JS twin, on the wire: its polled watcher
// (watch_dir / get_new_events / stop) and the client-stream StreamInput.
async function envd(sbx, method, body, contentType = "application/json") {
  const res = await fetch(process.env.E2B_SANDBOX_URL + "/" + method, {
    method: "POST",
    headers: {
      "Content-Type": contentType,
      "Connect-Protocol-Version": "1",
      "E2b-Sandbox-Id": sbx.sandboxId,
      "E2b-Sandbox-Port": "49983",
      "X-Access-Token": await accessToken(sbx.sandboxId),
    },
    body,
  });
  return res;
}
async function tokens(id) {
  const res = await fetch(base + "/v2/sandboxes/" + id + "/connect", {
    method: "POST",
    headers: { "X-API-KEY": process.env.E2B_API_KEY, "Content-Type": "application/json" },
    body: "{}",
  });
  return res.json();
}
async function accessToken(id) {
  return (await tokens(id)).envdAccessToken;
}

test("polled watcher: CreateWatcher, GetWatcherEvents, RemoveWatcher", async () => {
  const sbx = await Sandbox.create();
  made.push(sbx.sandboxId);
  await sbx.files.makeDir("/tmp/polled");
  const created = await envd(sbx, "filesystem.Filesystem/CreateWatcher", JSON.stringify({ path: "/tmp/polled" }));
  assert.equal(created.status, 200);
  const { watcherId } = await created.json();
  assert.ok(watcherId);
  // The first poll after a write sees it: serve syncs with the agent's watch first.
  await sbx.files.write("/tmp/polled/a.txt", "a");
  const got = await envd(sbx, "filesystem.Filesystem/GetWatcherEvents", JSON.stringify({ watcherId }));
  assert.equal(got.status, 200);
  const events = (await got.json()).events;
  assert.ok(events.some((e) => e.name === "a.txt" && e.type === "EVENT_TYPE_CREATE"), JSON.stringify(events));
  const removed = await envd(sbx, "filesystem.Filesystem/RemoveWatcher", JSON.stringify({ watcherId }));
  assert.equal(removed.status, 200);
  const gone = await envd(sbx, "filesystem.Filesystem/GetWatcherEvents", JSON.stringify({ watcherId }));
  assert.equal(gone.status, 404);
  assert.equal((await gone.json()).code, "not_found");
  // The Python SDK's watch_dir("rel", include_entry=True): a relative path is the
  // default user's, as for every other call, and events carry their entries.
  await sbx.files.makeDir("polled-rel");
  const home = (await sbx.commands.run("pwd")).stdout.trim(); // where relative paths resolve too
  const rel = await envd(sbx, "filesystem.Filesystem/CreateWatcher", JSON.stringify({ path: "polled-rel", includeEntry: true }));
  assert.equal(rel.status, 200, await rel.clone().text());
  const relId = (await rel.json()).watcherId;
  await sbx.files.write("polled-rel/b.txt", "bb");
  await sbx.commands.run("mkdir polled-rel/made-by-a-command");
  const relGot = await envd(sbx, "filesystem.Filesystem/GetWatcherEvents", JSON.stringify({ watcherId: relId }));
  const relEvents = (await relGot.json()).events;
  const withEntry = relEvents.find((e) => e.name === "b.txt" && e.entry?.size === 2);
  assert.ok(relEvents.some((e) => e.name === "made-by-a-command" && e.type === "EVENT_TYPE_CREATE"), JSON.stringify(relEvents));
  assert.ok(withEntry, "a write of b.txt with its entry");
  assert.equal(withEntry.entry.path, home + "/polled-rel/b.txt");
  assert.equal(withEntry.entry.type, "FILE_TYPE_FILE");
});

test("polled watchers: 16 per sandbox, so one sandbox cannot take every other's", async () => {
  const [a, b] = [await Sandbox.create(), await Sandbox.create()];
  made.push(a.sandboxId, b.sandboxId);
  const create = (sbx) => envd(sbx, "filesystem.Filesystem/CreateWatcher", JSON.stringify({ path: "/tmp" }));
  const ids = [];
  for (let i = 0; i < 16; i++) {
    const res = await create(a);
    assert.equal(res.status, 200, await res.clone().text());
    ids.push((await res.json()).watcherId);
  }
  const over = await create(a);
  assert.equal(over.status, 429);
  assert.equal((await over.json()).code, "resource_exhausted");
  assert.equal((await create(b)).status, 200, "another sandbox still gets one");
  const removed = await envd(a, "filesystem.Filesystem/RemoveWatcher", JSON.stringify({ watcherId: ids[0] }));
  assert.equal(removed.status, 200);
  assert.equal((await create(a)).status, 200, "room again after a RemoveWatcher");
});

test("the Python SDK's execute: every field sent, null when not given", async () => {
  const sbx = await Sandbox.create();
  made.push(sbx.sandboxId);
  const res = await fetch(process.env.E2B_SANDBOX_URL + "/execute", {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      "E2b-Sandbox-Id": sbx.sandboxId,
      "E2b-Sandbox-Port": "49999",
      "X-Access-Token": (await tokens(sbx.sandboxId)).envdAccessToken,
      "E2B-Traffic-Access-Token": (await tokens(sbx.sandboxId)).trafficAccessToken,
    },
    body: JSON.stringify({ code: "6 * 7", context_id: null, language: null, env_vars: null }),
  });
  assert.equal(res.status, 200, await res.clone().text());
  const lines = (await res.text()).trim().split("\n").map((l) => JSON.parse(l));
  assert.ok(lines.some((l) => l.type === "result" && l.text === "42"), JSON.stringify(lines));
});

test("StreamInput feeds a process's stdin from a client stream", async () => {
  const sbx = await Sandbox.create();
  made.push(sbx.sandboxId);
  const h = await sbx.commands.run("head -c 11", { background: true, stdin: true });
  const env = (o) => {
    const b = Buffer.from(JSON.stringify(o));
    const head = Buffer.alloc(5);
    head.writeUInt32BE(b.length, 1);
    return Buffer.concat([head, b]);
  };
  const body = Buffer.concat([
    env({ start: { process: { pid: h.pid } } }),
    env({ data: { input: { stdin: Buffer.from("hello ").toString("base64") } } }),
    env({ keepalive: {} }),
    env({ data: { input: { stdin: Buffer.from("world").toString("base64") } } }),
  ]);
  const res = await envd(sbx, "process.Process/StreamInput", body, "application/connect+json");
  assert.equal(res.status, 200);
  const r = await h.wait();
  assert.equal(r.stdout, "hello world");
});

test("a disconnected handle leaves the process running; connect re-attaches", async () => {
  const sbx = await Sandbox.create();
  made.push(sbx.sandboxId);
  const h = await sbx.commands.run("sleep 1; echo done-late", { background: true });
  await h.disconnect();
  const again = await sbx.commands.connect(h.pid);
  const r = await again.wait();
  assert.equal(r.stdout, "done-late\n");
});

// GET through serve with a Host of our choosing (the test has no wildcard DNS name).
function getVia(host, headers = {}, path = "/hello.txt") {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, path, headers: { Host: host, ...headers } },
      (res) => {
        let body = "";
        res.on("data", (d) => (body += d));
        res.on("end", () => resolve({ status: res.statusCode, body }));
      });
    req.on("error", reject);
    req.end();
  });
}

// E2B's test_auto_resume_wakes_on_http_request, over plain HTTP with a Host of our choosing.
test("getHost traffic wakes a sandbox its timeout paused (lifecycle autoResume)", async () => {
  const sbx = await Sandbox.create({ timeoutMs: 300000, lifecycle: { onTimeout: "pause", autoResume: true } });
  made.push(sbx.sandboxId);
  await sbx.commands.run("mkdir -p /tmp/www && echo awake > /tmp/www/hello.txt && cd /tmp/www && " +
    "(setsid python3 -m http.server 8124 --bind 127.0.0.1 >/dev/null 2>&1 </dev/null &) && " +
    "for i in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/8124) 2>/dev/null && break; sleep 0.1; done");
  // Serving now (a guest under KVM's emulator takes seconds to start python): time out soon.
  await sbx.setTimeout(3000);
  const deadline = Date.now() + 40000;
  while ((await Sandbox.getInfo(sbx.sandboxId)).state !== "paused" && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 250));
  assert.equal((await Sandbox.getInfo(sbx.sandboxId)).state, "paused");
  const res = await getVia(sbx.getHost(8124), { "E2B-Traffic-Access-Token": sbx.trafficAccessToken });
  assert.deepEqual([res.status, res.body], [200, "awake\n"]);
  assert.equal((await Sandbox.getInfo(sbx.sandboxId)).state, "running");
});

test("getHost(port) names this server (<port>-<id>.<--preview-domain>); allowPublicTraffic false puts it behind the traffic token", async () => {
  const serve = async (sbx) => {
    await sbx.commands.run("mkdir -p /tmp/www && echo hi-from-8123 > /tmp/www/hello.txt && cd /tmp/www && " +
      "(setsid python3 -m http.server 8123 --bind 127.0.0.1 >/dev/null 2>&1 </dev/null &) && " +
      "for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/8123) 2>/dev/null && break; sleep 0.1; done");
  };
  // E2B's default: public traffic, no token needed.
  const pub = await Sandbox.create();
  made.push(pub.sandboxId);
  await serve(pub);
  const open = await getVia(pub.getHost(8123));
  assert.deepEqual([open.status, open.body], [200, "hi-from-8123\n"], "public traffic by default");
  assert.equal((await Sandbox.getInfo(pub.sandboxId)).network?.allowPublicTraffic, true);
  const sbx = await Sandbox.create({ network: { allowPublicTraffic: false } });
  made.push(sbx.sandboxId);
  await serve(sbx);
  assert.equal((await Sandbox.getInfo(sbx.sandboxId)).network?.allowPublicTraffic, false);
  const host = sbx.getHost(8123);
  const port = new URL(base).port;
  assert.equal(host, `8123-${sbx.sandboxId}.e2b.test:${port}`);
  assert.ok(sbx.trafficAccessToken, "a server with a token mints a traffic token");
  const ok = await getVia(host, { "E2B-Traffic-Access-Token": sbx.trafficAccessToken });
  assert.deepEqual([ok.status, ok.body], [200, "hi-from-8123\n"]);
  const denied = await getVia(host);
  assert.equal(denied.status, 403, "no traffic token");
  const wrong = await getVia(host, { "E2B-Traffic-Access-Token": "0".repeat(sbx.trafficAccessToken.length) });
  assert.equal(wrong.status, 403, "a wrong traffic token");
  for (const network of [{ allowPublicTraffic: "no" }, { maskRequestHost: "a b" }, { maskRequestHost: "x\r\nInjected: 1" }]) {
    const badField = await fetch(base + "/sandboxes", { method: "POST", headers: { "X-API-KEY": process.env.E2B_API_KEY,
      "Content-Type": "application/json" }, body: JSON.stringify({ templateID: "base", network }) });
    assert.equal(badField.status, 400, JSON.stringify(network));
  }
  // maskRequestHost: the Host the sandbox's server sees, ${PORT} its port.
  const masked = await Sandbox.create({ network: { maskRequestHost: "custom-host.example.com:${PORT}" } });
  made.push(masked.sandboxId);
  await masked.files.write("/tmp/echo_host.py", "import http.server as h\n" +
    "class H(h.BaseHTTPRequestHandler):\n" +
    "    def do_GET(s):\n" +
    "        b = s.headers['Host'].encode()\n" +
    "        s.send_response(200); s.send_header('Content-Length', str(len(b))); s.end_headers(); s.wfile.write(b)\n" +
    "    def log_message(s, *a): pass\n" +
    "h.HTTPServer(('127.0.0.1', 8125), H).serve_forever()\n");
  await masked.commands.run("(setsid python3 /tmp/echo_host.py >/dev/null 2>&1 </dev/null &) && " +
    "for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/8125) 2>/dev/null && break; sleep 0.1; done");
  const seen = await getVia(masked.getHost(8125));
  assert.deepEqual([seen.status, seen.body], [200, "custom-host.example.com:8125"]);
  assert.equal((await Sandbox.getInfo(masked.sandboxId)).network?.maskRequestHost, "custom-host.example.com:${PORT}");
  const gone = await getVia(`8123-nosuchsandbox.e2b.test:${port}`, { "E2B-Traffic-Access-Token": sbx.trafficAccessToken });
  assert.equal(gone.status, 404);
  // A sandbox of the Mitos API, its id chosen by its user, is not there to E2B's
  // unauthenticated hosts until E2B connects to it: they tell nobody it exists.
  const chosen = await fetch(base + "/v1/fork", { method: "POST", headers: { Authorization: "Bearer " + process.env.E2B_API_KEY,
    "Content-Type": "application/json" }, body: JSON.stringify({ template: "base", id: "chosen-name" }) });
  assert.equal(chosen.status, 200, await chosen.clone().text());
  made.push("chosen-name");
  const nobody = await getVia(`49983-nobody-here.e2b.test:${port}`, {}, "/health");
  for (const [h, path, want] of [[`8123-chosen-name.e2b.test:${port}`, "/hello.txt", gone], [`49983-chosen-name.e2b.test:${port}`, "/health", nobody]]) {
    const res = await getVia(h, {}, path);
    assert.deepEqual([res.status, res.body.replaceAll("chosen-name", "X")], [want.status, want.body.replaceAll(/nosuchsandbox|nobody-here/g, "X")], h);
  }
  await Sandbox.connect("chosen-name");
  const known = await getVia(`49983-chosen-name.e2b.test:${port}`, {}, "/health");
  assert.equal(known.status, 204, "connected: envd answers");
  // The SDK's own hosts for envd and the interpreter (its URLs without E2B_SANDBOX_URL).
  const envd = await getVia(`49983-${sbx.sandboxId}.e2b.test:${port}`, {}, "/health");
  assert.ok(envd.status === 204 || envd.status === 200, `envd health by host: ${envd.status} ${envd.body}`);
});
