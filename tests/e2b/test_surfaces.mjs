// One sandbox, two surfaces: an E2B sandbox is forked through the Mitos API and
// its children are reached with Sandbox.connect; a Mitos sandbox is reached
// through E2B; raw protocol details the SDK relies on.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Sandbox } from "e2b";

const base = process.env.E2B_API_URL;
const auth = { Authorization: "Bearer " + process.env.E2B_API_KEY, "Content-Type": "application/json" };
const made = [];
after(async () => {
  for (const id of made) await Sandbox.kill(id).catch(() => {});
});

test("fork an E2B sandbox through /v1/fork and connect to the children", async () => {
  const sbx = await Sandbox.create();
  made.push(sbx.sandboxId);
  await sbx.files.write("/opt/parent.txt", "from the parent");
  const res = await fetch(base + "/v1/fork", { method: "POST", headers: auth, body: JSON.stringify({ sandbox_id: sbx.sandboxId, n: 2 }) });
  assert.equal(res.status, 201);
  const kids = (await res.json()).sandboxes.map((s) => s.id);
  made.push(...kids);
  assert.equal(kids.length, 2);
  for (const id of kids) {
    const child = await Sandbox.connect(id);
    assert.equal(await child.files.read("/opt/parent.txt"), "from the parent");
    await child.files.write("/opt/child.txt", id);
  }
  assert.equal(await sbx.files.exists("/opt/child.txt"), false, "children do not share files with the parent (the process engine forks the writable layer; /tmp is a tmpfs of its own)");
});

test("a sandbox made with the Mitos API is an E2B sandbox too", async () => {
  await fetch(base + "/v1/templates", { method: "POST", headers: auth, body: JSON.stringify({ name: "python" }) });
  const res = await fetch(base + "/v1/fork", { method: "POST", headers: auth, body: JSON.stringify({ template: "python" }) });
  assert.equal(res.status, 201);
  const id = (await res.json()).sandboxes[0].id;
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
  const noTpl = await Sandbox.create("no-such-template").then(() => null, (e) => e);
  assert.ok(noTpl, "an unknown template is refused");
});
