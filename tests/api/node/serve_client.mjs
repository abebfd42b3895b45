// What the Node tests share: the serve under test ($MITOS_BASE_URL), its REST
// routes, a sandbox of the python template, and a Connect client for it.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { createPromiseClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { SandboxService } from "./sandbox_service.mjs";

export const base = process.env.MITOS_BASE_URL;
// A serve (or a cluster router) with a token: $MITOS_TOKEN.
const auth = process.env.MITOS_TOKEN ? { Authorization: "Bearer " + process.env.MITOS_TOKEN } : {};

export async function rest(method, path, body) {
  const res = await fetch(base + path, {
    method,
    headers: { "Content-Type": "application/json", ...auth },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

export const forSandbox = (id) => ({ headers: { "X-Sandbox-Id": id, ...auth } });

// A new sandbox of the python template: its id.
export async function newSandbox(prefix) {
  assert.ok(base, "MITOS_BASE_URL is set");
  await rest("POST", "/v1/templates", { id: "python" });
  const r = await rest("POST", "/v1/fork", { template: "python", id: prefix + "-" + randomBytes(4).toString("hex") });
  assert.equal(r.status, 200);
  return r.body.id;
}

// sandbox.v1.Sandbox over HTTP/1.1 or "2" (h2c, prior knowledge), JSON codec.
export function sandboxClient(httpVersion) {
  return createPromiseClient(SandboxService, createConnectTransport({ baseUrl: base, httpVersion, useBinaryFormat: false }));
}
