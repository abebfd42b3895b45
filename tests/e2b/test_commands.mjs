// commands and pty through the unmodified `e2b` SDK: foreground, streaming,
// background, list, kill, stdin, timeouts, exit errors, users and cwd.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Sandbox, CommandExitError, TimeoutError } from "e2b";

let sbx;
before(async () => {
  sbx = await Sandbox.create({ envs: { SANDBOX_WIDE: "yes" } });
});
after(async () => {
  if (sbx) await sbx.kill().catch(() => {});
});

test("foreground run returns stdout, stderr and the exit code", async () => {
  const r = await sbx.commands.run("echo out; echo err >&2");
  assert.equal(r.exitCode, 0);
  assert.equal(r.stdout, "out\n");
  assert.equal(r.stderr, "err\n");
});

test("a non-zero exit throws CommandExitError with the output", async () => {
  await assert.rejects(sbx.commands.run("echo partial; exit 3"), (e) => {
    assert.ok(e instanceof CommandExitError);
    assert.equal(e.exitCode, 3);
    assert.equal(e.stdout, "partial\n");
    assert.equal(e.error, "exit status 3");
    return true;
  });
});

test("envs: sandbox-wide from create, per call wins; cwd", async () => {
  const r = await sbx.commands.run("echo $SANDBOX_WIDE $ONE; pwd", { envs: { ONE: "1" }, cwd: "/tmp" });
  assert.equal(r.stdout, "yes 1\n/tmp\n");
  const o = await sbx.commands.run("echo $SANDBOX_WIDE", { envs: { SANDBOX_WIDE: "override" } });
  assert.equal(o.stdout, "override\n");
});

test("a relative or ~ cwd resolves against the home directory", async () => {
  const home = (await sbx.commands.run("echo -n $HOME")).stdout.replace(/\/$/, "");
  assert.equal((await sbx.commands.run("pwd", { cwd: "~" })).stdout, home + "\n");
  await sbx.files.makeDir("proj/sub");
  assert.equal((await sbx.commands.run("pwd", { cwd: "proj/sub" })).stdout, home + "/proj/sub\n");
  assert.equal((await sbx.commands.run("pwd", { cwd: "~/proj" })).stdout, home + "/proj\n");
  await assert.rejects(sbx.commands.run("pwd", { cwd: "no/such/dir" }));
});

test("streaming callbacks see output as it is produced", async () => {
  const seen = [];
  const t0 = Date.now();
  let firstAt = 0;
  const r = await sbx.commands.run("echo one; sleep 1; echo two", {
    onStdout: (d) => {
      if (!firstAt) firstAt = Date.now();
      seen.push(d);
    },
  });
  assert.equal(seen.join(""), "one\ntwo\n");
  assert.ok(seen.length >= 2, "two separate chunks");
  assert.ok(firstAt - t0 < Date.now() - t0, "the first line came before the end");
  assert.equal(r.stdout, "one\ntwo\n");
});

test("background: handle, list, connect, stdin, kill", async () => {
  const h = await sbx.commands.run("cat", { background: true, stdin: true });
  assert.ok(h.pid > 0);
  const list = await sbx.commands.list();
  const mine = list.find((p) => p.pid === h.pid);
  assert.ok(mine, "listed");
  assert.equal(mine.cmd, "/bin/bash");
  assert.deepEqual(mine.args, ["-l", "-c", "cat"]);
  // Connected first: like envd, connect streams what the command prints from then on.
  const got = [];
  const again = await sbx.commands.connect(h.pid, { onStdout: (d) => got.push(d) });
  await sbx.commands.sendStdin(h.pid, "hello stdin\n");
  await sbx.commands.closeStdin(h.pid);
  const res = await again.wait();
  assert.equal(res.exitCode, 0);
  assert.match(res.stdout + got.join(""), /hello stdin/);
  const h2 = await sbx.commands.run("sleep 60", { background: true });
  assert.equal(await sbx.commands.kill(h2.pid), true);
  await assert.rejects(h2.wait(), (e) => e instanceof CommandExitError && e.exitCode === -1);
  assert.equal(await sbx.commands.kill(h2.pid), false, "killing a gone pid answers false");
});

test("a command timeout ends it with a TimeoutError", async () => {
  // A sandbox of its own: the kill may land while the login shell still runs its
  // profile, and a profile killed half-way can leave state behind (pyenv's rehash
  // lock on a host root) that would stall the next login shells.
  const own = await Sandbox.create();
  try {
    const t0 = Date.now();
    await assert.rejects(own.commands.run("sleep 30", { timeoutMs: 1500 }), TimeoutError);
    assert.ok(Date.now() - t0 < 15000);
  } finally {
    await own.kill();
  }
});

test("binary output and large output arrive whole", async () => {
  const r = await sbx.commands.run("head -c 3000000 /dev/zero | tr '\\0' 'x' | wc -c; seq 1 20000 | tail -1");
  assert.equal(r.stdout, "3000000\n20000\n");
  const big = await sbx.commands.run("seq 1 200000");
  assert.equal(big.stdout.split("\n").length, 200001);
});

test("without a user, E2B's default user \"user\" where the sandbox has it, else root", async () => {
  const has = (await sbx.commands.run("getent passwd user || true", { user: "root" })).stdout.trim() !== "";
  assert.equal((await sbx.commands.run("id -un")).stdout.trim(), has ? "user" : "root");
  const home = (await sbx.commands.run("echo -n $HOME")).stdout;
  if (has) assert.equal(home, "/home/user");
  const info = await sbx.files.write("default-user.txt", "mine");
  assert.equal(info.path, home.replace(/\/$/, "") + "/default-user.txt", "files and commands share the home");
  assert.equal((await sbx.commands.run("stat -c %U \"$HOME/default-user.txt\"")).stdout.trim(), has ? "user" : "root");
});

test("user root runs as root", async () => {
  const r = await sbx.commands.run("id -u", { user: "root" });
  assert.equal(r.stdout, "0\n");
});

test("pty: create, send input, resize, kill", async () => {
  const chunks = [];
  const pty = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => chunks.push(Buffer.from(d)) });
  assert.ok(pty.pid > 0);
  await sbx.pty.resize(pty.pid, { cols: 100, rows: 40 });
  await sbx.pty.sendInput(pty.pid, new TextEncoder().encode("stty size; echo pty-$((6*7))\n"));
  const deadline = Date.now() + 15000;
  while (!Buffer.concat(chunks).toString().includes("pty-42") && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 100));
  const text = Buffer.concat(chunks).toString();
  assert.match(text, /pty-42/);
  assert.match(text, /40 100/);
  assert.equal(await sbx.pty.kill(pty.pid), true);
});

test("pty: a reconnected terminal's output arrives as terminal data", async () => {
  const pty = await sbx.pty.create({ cols: 80, rows: 24, onData: () => {}, envs: { FOO: "bar" } });
  await pty.disconnect();
  const chunks = [];
  const again = await sbx.pty.connect(pty.pid, { onData: (d) => chunks.push(Buffer.from(d)) });
  await sbx.pty.sendInput(pty.pid, new TextEncoder().encode("echo foo-is-$FOO; exit\n"));
  const r = await again.wait();
  assert.equal(r.exitCode, 0);
  assert.match(Buffer.concat(chunks).toString(), /foo-is-bar/);
});

test("killing the sandbox under a running command cuts the stream: the SDK reports it killed", async () => {
  const own = await Sandbox.create();
  const h = await own.commands.run("sleep 60", { background: true });
  await own.kill();
  const err = await h.wait().then(() => null, (e) => e);
  assert.ok(err instanceof TimeoutError, String(err));
  assert.match(err.message, /killed or reached its end of life/);
});
