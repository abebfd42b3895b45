"use strict";
/* mitos-agent's run_code kernel for JavaScript and TypeScript: one Node process per
 * code context, the sibling of mitos_kernel.py with the same framing.
 *
 * The agent starts it with:
 *   fd 0  /dev/null (the user's code reads nothing from the agent)
 *   fd 1  raw stdout of the user's code (and of anything it spawns)
 *   fd 2  raw stderr
 *   fd 3  events: frames of a 4-byte big-endian length + JSON, "id" of the request:
 *         {"type": "result", "is_main_result": true, "data": {"text/plain": util.inspect(value)}, "metadata": {}}
 *         {"type": "error", "name": str, "value": str, "traceback": str}
 *         {"type": "done", "execution_count": int, "status": "ok" | "error"}
 *   fd 4  requests, same framing:
 *         {"id": N, "generation": G, "code": "...", "env": {"K": "V"}, "typescript": bool}
 *
 * A cell is a script run in this process's global context, so what it declares stays
 * for the next one. What a notebook user expects and a plain script refuses, it does:
 * - the value of the last expression is the result (none when it is undefined);
 * - top-level `await` (the cell then runs as an async function; its declarations are
 *   hoisted to globals first, so they outlive it);
 * - static `import` (rewritten to `await import()`, resolved from the cell's cwd);
 * - top-level let/const/class become vars, so running a cell again does not fail on
 *   "already declared";
 * - with "typescript", types are stripped first (Debian's node-typescript).
 * SIGINT interrupts a cell, waiting or computing; the kernel lives on. A changed
 * generation (the sandbox is a clone) gives Math.random a new source: V8's own state
 * cannot be reseeded and would repeat in every clone.
 * Output is written synchronously (stdout and stderr are pipes), so everything a cell
 * printed precedes the event that follows it, as the agent's ordering needs.
 */
const fs = require("fs");
const path = require("path");
const util = require("util");
const vm = require("vm");
const { createRequire, builtinModules } = require("module");
const { pathToFileURL } = require("url");

/* Debian installs its Node modules there; a Node from elsewhere does not look. */
function debianModule(name) {
	try {
		return require(name);
	} catch {
		return require(path.join("/usr/share/nodejs", name));
	}
}

const acorn = debianModule("acorn");
const walk = debianModule("acorn-walk");
let typescript = null; /* 60 MiB of compiler: loaded by the first TypeScript cell */

const EVENTS_FD = 3;
const REQUESTS_FD = 4;
/* An event must fit one agent frame (1 MiB) with room for the envelope. */
const MAX_EVENT = 1000 * 1000;
const EMPTY = Symbol("no value");

let currentId = 0;
let executionCount = 0;

const pause = new Int32Array(new SharedArrayBuffer(4));

function writeAll(fd, buf) {
	for (let off = 0; off < buf.length;) {
		try {
			off += fs.writeSync(fd, buf, off);
		} catch (e) {
			if (e.code !== "EAGAIN")
				throw e;
			Atomics.wait(pause, 0, 0, 1); /* the pipe is full (made non-blocking by the cell): wait, do not spin */
		}
	}
}

function send(obj) {
	obj.id = currentId;
	let data = Buffer.from(JSON.stringify(obj));
	if (data.length > MAX_EVENT)
		data = Buffer.from(JSON.stringify({
			id: currentId, type: obj.type, is_main_result: obj.is_main_result,
			data: { "text/plain": `<output of ${data.length} bytes omitted: over the ${MAX_EVENT} byte limit>` },
		}));
	const hdr = Buffer.alloc(4);
	hdr.writeUInt32BE(data.length);
	writeAll(EVENTS_FD, Buffer.concat([hdr, data]));
}

/* A stack as far as the user's code goes: the kernel's frames below it say nothing. */
function userFrames(stack) {
	return stack.split("\n").filter((l) => !l.includes(__filename) && !/\((node:vm|node:internal\/process\/task_queues|node:events):/.test(l)).join("\n");
}

function sendError(err) {
	const isError = err instanceof Error || (err && typeof err === "object" && "stack" in err);
	send({
		type: "error",
		name: (err && err.name) || typeof err,
		value: isError && typeof err.message === "string" ? err.message : util.inspect(err),
		traceback: isError && typeof err.stack === "string" ? userFrames(err.stack) : "",
	});
}

/* ---- from a cell's text to a script ---- */

function stripTypes(code) {
	if (!typescript) {
		try {
			typescript = debianModule("typescript");
		} catch {
			throw new Error("TypeScript needs the typescript module in the image (Debian package node-typescript)");
		}
	}
	const ts = typescript;
	return ts.transpileModule(code, {
		compilerOptions: {
			target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext,
			isolatedModules: true, preserveValueImports: true,
		},
		reportDiagnostics: false,
	}).outputText;
}

function boundNames(pattern, out) {
	switch (pattern.type) {
	case "Identifier": out.push(pattern.name); break;
	case "ObjectPattern":
		for (const p of pattern.properties)
			boundNames(p.type === "RestElement" ? p.argument : p.value, out);
		break;
	case "ArrayPattern":
		for (const e of pattern.elements)
			if (e)
				boundNames(e, out);
		break;
	case "RestElement": boundNames(pattern.argument, out); break;
	case "AssignmentPattern": boundNames(pattern.left, out); break;
	}
	return out;
}

function hasTopLevelAwait(ast) {
	let found = false;
	walk.recursive(ast, null, {
		Function() {}, /* an await in a function is that function's */
		AwaitExpression() { found = true; },
		ForOfStatement(node, st, c) {
			found = found || node.await;
			walk.base.ForOfStatement(node, st, c);
		},
	});
	return found;
}

/* Every import() of a cell goes through the kernel's own (a script run by vm has no
 * module loader without --experimental-vm-modules). */
const IMPORT = "__mitos_import__";

function importText(node, src) {
	const text = (n) => src.slice(n.start, n.end);
	const from = `await ${IMPORT}(${text(node.source)})`;
	const props = [];
	let namespace = null;
	for (const s of node.specifiers) {
		if (s.type === "ImportNamespaceSpecifier")
			namespace = s.local.name;
		else if (s.type === "ImportDefaultSpecifier")
			props.push(`default: ${s.local.name}`);
		else
			props.push(`${text(s.imported)}: ${s.local.name}`);
	}
	if (namespace)
		return `var ${namespace} = ${from}` + (props.length ? `, {${props.join(", ")}} = ${namespace};` : ";");
	return props.length ? `var {${props.join(", ")}} = ${from};` : `${from};`;
}

/* Returns {source, async}: the script to run, and whether its value is a promise of
 * {value} (a cell with top-level await). Edits keep the cell's lines where they were,
 * so a stack trace's line numbers are the user's. */
const PARSE = {
	ecmaVersion: "latest", sourceType: "script", allowHashBang: true,
	allowAwaitOutsideFunction: true, allowImportExportEverywhere: true,
};

function splice(code, edits) {
	edits.sort((a, b) => a.start - b.start || a.end - b.end);
	let out = "";
	let at = 0;
	for (const e of edits) {
		out += code.slice(at, e.start) + e.text;
		at = e.end;
	}
	return out + code.slice(at);
}

/* A syntax error said as V8 would, with the line and a caret, not acorn's stack. */
function parse(code, filename) {
	try {
		return acorn.parse(code, PARSE);
	} catch (e) {
		if (!(e instanceof SyntaxError) || !e.loc)
			throw e;
		const line = code.split("\n")[e.loc.line - 1] || "";
		const err = new SyntaxError(e.message.replace(/ \(\d+:\d+\)$/, ""));
		err.stack = `${filename}:${e.loc.line}\n${line}\n${" ".repeat(e.loc.column)}^\n\nSyntaxError: ${err.message}`;
		throw err;
	}
}

function prepare(code, ts, filename) {
	if (ts)
		code = stripTypes(code);
	let ast = parse(code, filename);
	const calls = [];
	walk.simple(ast, { ImportExpression(n) { calls.push({ start: n.start, end: n.start + 6, text: IMPORT }); } });
	if (calls.length)
		ast = parse(code = splice(code, calls), filename);
	const edits = [];
	const edit = (start, end, text) => edits.push({ start, end, text });
	const text = (n) => code.slice(n.start, n.end);
	const isAsync = ast.body.some((n) => n.type === "ImportDeclaration") || hasTopLevelAwait(ast);
	const hoisted = [];
	const globalsOfFunctions = [];

	const declare = (node) => {
		if (node.type === "VariableDeclaration") {
			if (!isAsync) {
				edit(node.start, node.start + node.kind.length, "var");
				return;
			}
			const assigns = [];
			for (const d of node.declarations) {
				hoisted.push(...boundNames(d.id, []));
				if (d.init || node.kind !== "var")
					assigns.push(`(${text(d.id)} = ${d.init ? text(d.init) : "undefined"})`);
			}
			edit(node.start, node.end, assigns.length ? `void (${assigns.join(", ")});` : ";");
		} else if (node.type === "ClassDeclaration" && node.id) {
			if (isAsync)
				hoisted.push(node.id.name);
			edit(node.start, node.start, `${isAsync ? "" : "var "}${node.id.name} = `);
			edit(node.end, node.end, ";");
		} else if (node.type === "FunctionDeclaration" && node.id && isAsync) {
			globalsOfFunctions.push(node.id.name);
		}
	};

	for (const node of ast.body) {
		switch (node.type) {
		case "ImportDeclaration":
			edit(node.start, node.end, importText(node, code));
			break;
		case "ExportNamedDeclaration":
			if (node.declaration) {
				edit(node.start, node.declaration.start, "");
				declare(node.declaration);
			} else {
				edit(node.start, node.end, ";");
			}
			break;
		case "ExportDefaultDeclaration":
			edit(node.start, node.declaration.start, "");
			declare(node.declaration);
			break;
		case "ExportAllDeclaration":
			edit(node.start, node.end, ";");
			break;
		default:
			declare(node);
		}
	}
	const last = ast.body[ast.body.length - 1];
	if (isAsync && last && last.type === "ExpressionStatement") {
		edit(last.expression.start, last.expression.start, "return {value: (");
		edit(last.expression.end, last.expression.end, ")};");
	}
	let out = splice(code, edits);
	if (out.startsWith("#!"))
		out = "//" + out.slice(2);
	if (!isAsync)
		return { source: out, async: false };
	const head = (hoisted.length ? `var ${[...new Set(hoisted)].join(", ")}; ` : "") + "(async () => { " +
		globalsOfFunctions.map((n) => `globalThis.${n} = ${n}; `).join("");
	return { source: head + out + "\n})()", async: true };
}

/* ---- modules: resolved from the cell's working directory ---- */

function cellRequire() {
	return createRequire(path.join(process.cwd(), "[cell]"));
}

function importFromCwd(specifier) {
	const bare = !/^(\.{0,2}\/|[a-z][a-z0-9+.-]*:)/i.test(specifier);
	if (bare && !builtinModules.includes(specifier)) {
		try {
			return import(pathToFileURL(cellRequire().resolve(specifier)).href);
		} catch {
			/* an ESM-only package has no require() entry: Node's own resolution */
		}
	}
	if (specifier.startsWith("./") || specifier.startsWith("../") || specifier.startsWith("/"))
		return import(pathToFileURL(path.resolve(process.cwd(), specifier)).href);
	return import(specifier);
}

/* ---- running cells ---- */

let interruptCell = null; /* rejects the awaited cell on SIGINT */

process.on("SIGINT", () => {
	if (interruptCell) {
		const e = new Error("Script execution was interrupted by `SIGINT`");
		e.stack = `Error: ${e.message}`;
		interruptCell(e);
	}
});

/* The agent is gone (it closed our pipes): so are we. Saying so would only fail again. */
function orphaned(e) {
	return e && (e.code === "EPIPE" || e.code === "EBADF");
}
for (const s of [process.stdout, process.stderr])
	s.on("error", (e) => orphaned(e) && process.exit(0));

/* A callback or a promise the cell left behind failed after the cell: said on stderr,
 * as a notebook does, and the kernel goes on. */
process.on("uncaughtException", (e) => {
	if (orphaned(e))
		process.exit(0);
	process.stderr.write(`Uncaught ${util.inspect(e)}\n`);
});
process.on("unhandledRejection", (e) => process.stderr.write(`Uncaught (in promise) ${util.inspect(e)}\n`));

Object.defineProperty(globalThis, IMPORT, { value: importFromCwd });

async function evaluate(code, ts) {
	const filename = `cell-${executionCount}`;
	const { source, async } = prepare(code, ts, filename);
	const script = new vm.Script(source, { filename });
	globalThis.require = cellRequire();
	const value = script.runInThisContext({ breakOnSigint: true, displayErrors: false });
	if (!async)
		return value;
	const interrupted = new Promise((_, reject) => { interruptCell = reject; });
	try {
		const box = await Promise.race([value, interrupted]);
		return box ? box.value : EMPTY;
	} finally {
		interruptCell = null;
	}
}

async function run(req) {
	const saved = new Map();
	for (const [key, value] of Object.entries(req.env || {})) {
		saved.set(key, process.env[key]);
		process.env[key] = String(value);
	}
	executionCount++;
	try {
		const value = await evaluate(String(req.code || ""), !!req.typescript);
		if (value !== undefined && value !== EMPTY)
			send({ type: "result", is_main_result: true, data: { "text/plain": util.inspect(value) }, metadata: {} });
		return "ok";
	} catch (e) {
		sendError(e);
		return "error";
	} finally {
		for (const [key, value] of saved) {
			if (value === undefined)
				delete process.env[key];
			else
				process.env[key] = value;
		}
	}
}

let generation = null;

function reseedIfCloned(gen) {
	if (generation !== null && gen !== generation) {
		const fd = fs.openSync("/dev/urandom", "r");
		const pool = Buffer.alloc(4096);
		let at = pool.length;
		Math.random = function random() {
			if (at === pool.length) {
				fs.readSync(fd, pool, 0, pool.length, null);
				at = 0;
			}
			const hi = pool.readUInt32LE(at) >>> 5, lo = pool.readUInt32LE(at + 4) >>> 6;
			at += 8;
			return (hi * 67108864 + lo) / 9007199254740992; /* 53 random bits */
		};
	}
	generation = gen;
}

async function serve(req) {
	currentId = req.id || 0;
	reseedIfCloned(req.generation);
	const status = await run(req);
	send({ type: "done", execution_count: executionCount, status });
}

function main() {
	const requests = fs.createReadStream(null, { fd: REQUESTS_FD, highWaterMark: 1 << 20 });
	let pending = Buffer.alloc(0);
	let queue = Promise.resolve();
	requests.on("data", (chunk) => {
		pending = Buffer.concat([pending, chunk]);
		while (pending.length >= 4 && pending.length >= 4 + pending.readUInt32BE(0)) {
			const len = pending.readUInt32BE(0);
			const req = JSON.parse(pending.subarray(4, 4 + len).toString());
			pending = pending.subarray(4 + len);
			queue = queue.then(() => serve(req)); /* cells run one after another */
		}
	});
	/* The agent closes our requests only when it is done with us: a cell still
	 * running has no one to answer. */
	requests.on("end", () => process.exit(0));
	requests.on("error", () => process.exit(0));
}

main();
