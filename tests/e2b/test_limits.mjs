// A node at its sandbox limit (run.py starts serve with --max-sandboxes 16) answers
// 429 with Retry-After, which the SDK retries and then raises as RateLimitError.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Sandbox, RateLimitError } from "e2b";

const made = [];
after(async () => {
  for (const s of made) await s.kill().catch(() => {});
});

test("creating past --max-sandboxes is a RateLimitError", async () => {
  let err;
  for (let i = 0; i < 20 && !err; i++) {
    try {
      made.push(await Sandbox.create({ metadata: { suite: "limits" } }));
    } catch (e) {
      err = e;
    }
  }
  assert.ok(err instanceof RateLimitError, String(err));
  assert.ok(made.length <= 16);
  await made.pop().kill();
  made.push(await Sandbox.create({ metadata: { suite: "limits" } }));
});
