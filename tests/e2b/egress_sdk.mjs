// The npm e2b SDK's network options against `serve --egress`: run by
// tests/api/test_egress.py inside its namespaces (a stand-in internet at 1.1.1.1 and
// 8.8.8.8 answering "<address> <client>" over HTTP, a LAN at 10.99.0.2, a resolver that
// answers NAME.test with 1.1.1.1), not by the e2b-sdk suite (no "test_" prefix).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Sandbox, ALL_TRAFFIC, CommandExitError } from "e2b";

const made = [];
after(async () => {
  for (const s of made) await s.kill().catch(() => {});
});

async function create(opts) {
  const sbx = await Sandbox.create(opts);
  made.push(sbx);
  return sbx;
}

// The stand-in's answer, or null when the sandbox cannot reach it.
async function get(sbx, url) {
  try {
    const r = await sbx.commands.run(`curl -sS --max-time 2 ${url}`);
    return r.stdout.trim();
  } catch (e) {
    if (e instanceof CommandExitError) return null;
    throw e;
  }
}

test("the default: the internet through NAT, names through the node's resolver, not the LAN", async () => {
  const sbx = await create();
  assert.equal((await Sandbox.getInfo(sbx.sandboxId)).allowInternetAccess, true);
  assert.equal(await get(sbx, "http://1.1.1.1/"), "1.1.1.1 5.5.5.1");
  assert.equal(await get(sbx, "http://svc.test/"), "1.1.1.1 5.5.5.1");
  assert.equal(await get(sbx, "http://10.99.0.2/"), null);
});

test("allowInternetAccess: false", async () => {
  const sbx = await create({ allowInternetAccess: false });
  assert.equal((await Sandbox.getInfo(sbx.sandboxId)).allowInternetAccess, false);
  assert.equal(await get(sbx, "http://1.1.1.1/"), null);
});

test("allowOut wins over denyOut ALL_TRAFFIC", async () => {
  const sbx = await create({ network: { denyOut: [ALL_TRAFFIC], allowOut: ["1.1.1.1"] } });
  assert.equal(await get(sbx, "http://1.1.1.1/"), "1.1.1.1 5.5.5.1");
  assert.equal(await get(sbx, "http://8.8.8.8/"), null);
});

test("updateNetwork replaces the rules of a running sandbox", async () => {
  const sbx = await create();
  await sbx.updateNetwork({ denyOut: ["8.8.8.8"] });
  assert.equal(await get(sbx, "http://8.8.8.8/"), null);
  assert.equal(await get(sbx, "http://1.1.1.1/"), "1.1.1.1 5.5.5.1");
  await sbx.updateNetwork({});
  assert.equal(await get(sbx, "http://8.8.8.8/"), "8.8.8.8 5.5.5.1");
});

test("a host name in allowOut is refused, not ignored", async () => {
  await assert.rejects(Sandbox.create({ network: { allowOut: ["pypi.org"] } }), /egress proxy|host names/);
});
