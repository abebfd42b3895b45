// run_code through the unmodified `@e2b/code-interpreter` SDK: state, streamed
// stdout, errors, rich results, plots as png, contexts, JavaScript, TypeScript, bash.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Sandbox } from "@e2b/code-interpreter";

// Under emulation-only KVM (run.py --kvm sets it) a new IPython kernel takes over a
// minute to start, beyond the SDK's 60 s (so does importing pandas): those scenarios
// wait longer there, and the sandbox lives long enough for them.
const slow = process.env.MITOS_E2B_SLOW_GUEST === "1";
const newKernel = slow ? { requestTimeoutMs: 600_000, timeoutMs: 600_000 } : {};

let sbx;
before(async () => {
  sbx = await Sandbox.create(slow ? { timeoutMs: 1_800_000 } : {});
});
after(async () => {
  if (sbx) await sbx.kill().catch(() => {});
});

test("state carries across cells; the last expression is the main result", async () => {
  await sbx.runCode("x = 20");
  const e = await sbx.runCode("x + 22");
  assert.equal(e.text, "42");
  assert.equal(e.results[0].isMainResult, true);
  assert.equal(e.error, undefined);
  assert.ok(e.executionCount >= 2);
  const s = await sbx.runCode("'quoted'");
  assert.equal(s.text, "quoted");
});

test("stdout and stderr stream through callbacks", async () => {
  const out = [];
  const err = [];
  const e = await sbx.runCode("import sys, time\nprint('a', flush=True)\ntime.sleep(0.3)\nprint('b')\nprint('w', file=sys.stderr)", {
    onStdout: (m) => out.push(m.line),
    onStderr: (m) => err.push(m.line),
  });
  assert.equal(out.join(""), "a\nb\n");
  assert.equal(err.join(""), "w\n");
  assert.equal(e.logs.stdout.join(""), "a\nb\n");
});

test("an exception fills execution.error, it does not throw", async () => {
  const e = await sbx.runCode("1/0");
  assert.equal(e.error.name, "ZeroDivisionError");
  assert.match(e.error.value, /division by zero/);
  assert.match(e.error.traceback, /ZeroDivisionError/);
});

test("rich results: html, and a matplotlib plot as png", async () => {
  const h = await sbx.runCode("from IPython.display import HTML, display\ndisplay(HTML('<b>bold</b>'))");
  assert.equal(h.results[0].html, "<b>bold</b>");
  assert.equal(h.results[0].isMainResult, false);
  // tools/setup installs python3-matplotlib (tools/debian-packages.txt).
  const p = await sbx.runCode("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()");
  const png = p.results.find((r) => r.png);
  assert.ok(png, JSON.stringify(p.results.map((r) => r.formats())));
  assert.equal(Buffer.from(png.png, "base64").subarray(1, 4).toString(), "PNG");
});

test("a DataFrame result carries its columns as data", async () => {
  // Importing pandas under emulation-only KVM takes over a minute, as a new kernel does.
  const e = await sbx.runCode("import pandas as pd\npd.DataFrame({'a': [1, 2, None], 'when': pd.to_datetime(['2024-01-02'] * 3)})", newKernel);
  assert.deepEqual(e.results[0].data, { a: [1, 2, null], when: ["2024-01-02T00:00:00", "2024-01-02T00:00:00", "2024-01-02T00:00:00"] });
  const plain = await sbx.runCode("1 + 1");
  assert.equal(plain.results[0].data, undefined, "other results have no data");
  // Columns too big for one event are left out; the frame's rendering still comes.
  const big = await sbx.runCode("pd.DataFrame({'x': range(300000)})", newKernel);
  assert.equal(big.results[0].data, undefined);
  assert.match(big.results[0].html, /300000 rows/);
});

test("killing the sandbox under a running cell cuts the stream: the SDK reports it killed", async () => {
  const own = await Sandbox.create(slow ? { timeoutMs: 1_800_000 } : {});
  await own.runCode("1", newKernel); // the kernel is up: what follows is the cell alone
  setTimeout(() => own.kill().catch(() => {}), 1500);
  const err = await own.runCode("import time\ntime.sleep(300)", { timeoutMs: 300_000 }).then(() => null, (x) => x);
  assert.ok(err, "the execution does not succeed");
  assert.match(err.message, /killed while the request was in progress/);
});

test("envs apply to one execution", async () => {
  const e = await sbx.runCode("import os\nos.environ.get('ONLY_HERE')", { envs: { ONLY_HERE: "yes" } });
  assert.equal(e.text, "yes");
});

test("contexts: create, run in it, list, restart, remove", async () => {
  const ctx = await sbx.createCodeContext({ cwd: "/tmp" });
  assert.ok(ctx.id);
  assert.equal(ctx.language, "python");
  await sbx.runCode("y = 5", { context: ctx, ...newKernel });
  assert.equal((await sbx.runCode("y", { context: ctx })).text, "5");
  const inDefault = await sbx.runCode("y");
  assert.equal(inDefault.error.name, "NameError", "contexts do not share state");
  const cwd = await sbx.runCode("import os\nos.getcwd()", { context: ctx });
  assert.equal(cwd.text, "/tmp");
  const list = await sbx.listCodeContexts();
  assert.ok(list.some((c) => c.id === ctx.id));
  await sbx.restartCodeContext(ctx);
  assert.equal((await sbx.runCode("y", { context: ctx, ...newKernel })).error.name, "NameError");
  await sbx.removeCodeContext(ctx);
  assert.ok(!(await sbx.listCodeContexts()).some((c) => c.id === ctx.id));
});

test("javascript and typescript run in Node kernels, as E2B's defaults", async () => {
  const hello = await sbx.runCode("console.log('Hello, World!')", { language: "js", ...newKernel });
  assert.deepEqual(hello.logs.stdout, ["Hello, World!\n"]);
  assert.deepEqual(hello.results, [], "undefined is no result");
  const esm = await sbx.runCode("\n    import { readFileSync } from 'fs'\n    console.log(typeof readFileSync)\n    ", { language: "js" });
  assert.deepEqual(esm.logs.stdout, ["function\n"]);
  assert.equal((await sbx.runCode("\n    await Promise.resolve('Hello World!')\n    ", { language: "javascript" })).text, "Hello World!");
  await sbx.runCode("const base = 40; let { more } = await Promise.resolve({ more: 2 })", { language: "js" });
  assert.equal((await sbx.runCode("base + more", { language: "js" })).text, "42", "declarations outlive their cell");
  const env = await sbx.runCode("process.env.FOO", { language: "js", envs: { FOO: "bar" } });
  assert.equal(env.text, "bar");
  assert.equal((await sbx.runCode("process.env.FOO || 'default'", { language: "js" })).text, "default");
  const err = await sbx.runCode("null.x", { language: "js" });
  assert.equal(err.error.name, "TypeError");
  assert.match(err.error.value, /Cannot read properties of null/);
  const ts = await sbx.runCode("const message: string = 'Hello, World!'; console.log(message)", { language: "ts", ...newKernel });
  assert.deepEqual(ts.logs.stdout, ["Hello, World!\n"]);

  const ctx = await sbx.createCodeContext({ language: "javascript", cwd: "/tmp" });
  assert.equal(ctx.language, "javascript");
  assert.equal((await sbx.runCode("process.cwd()", { context: ctx })).text, "/tmp");
  assert.equal((await sbx.runCode("typeof base", { context: ctx })).text, "undefined", "contexts do not share state");
  const langs = (await sbx.listCodeContexts()).map((c) => c.language);
  assert.ok(langs.includes("python") && langs.includes("javascript"), langs.join());
  assert.equal((await sbx.listCodeContexts()).at(-1).id, ctx.id, "the newest context is listed last");
  await assert.rejects(sbx.runCode("1", { context: ctx, language: "python" }));
  await sbx.removeCodeContext(ctx);
});

test("bash: by language and in a bash context", async () => {
  const e = await sbx.runCode("echo from-bash; echo oops >&2", { language: "bash" });
  assert.equal(e.logs.stdout.join(""), "from-bash\n");
  assert.equal(e.logs.stderr.join(""), "oops\n");
  const ctx = await sbx.createCodeContext({ language: "bash", cwd: "/tmp" });
  assert.equal(ctx.language, "bash");
  const p = await sbx.runCode("pwd", { context: ctx });
  assert.equal(p.logs.stdout.join(""), "/tmp\n");
  const f = await sbx.runCode("exit 4", { context: ctx });
  assert.match(f.error.value, /exit status 4/);
});
