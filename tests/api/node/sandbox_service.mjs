// sandbox.v1.Sandbox as served by `mitos-vmm serve`, written by hand for the
// Connect JSON codec (api/API.md is the reference for every field).
import { proto3, Struct, Value, ScalarType } from "@bufbuild/protobuf";
import { MethodKind } from "@bufbuild/protobuf";

const T = ScalarType;

export const Keepalive = proto3.makeMessageType("sandbox.v1.Keepalive", []);

export const ExecRequest = proto3.makeMessageType("sandbox.v1.ExecRequest", [
  { no: 1, name: "command", kind: "scalar", T: T.STRING },
  { no: 2, name: "argv", kind: "scalar", T: T.STRING, repeated: true },
  { no: 3, name: "cwd", kind: "scalar", T: T.STRING },
  { no: 4, name: "envs", kind: "map", K: T.STRING, V: { kind: "scalar", T: T.STRING } },
  { no: 5, name: "timeout", kind: "scalar", T: T.DOUBLE },
  { no: 6, name: "stdin", kind: "scalar", T: T.BYTES },
  { no: 7, name: "user", kind: "scalar", T: T.STRING },
]);
export const StartEvent = proto3.makeMessageType("sandbox.v1.StartEvent", [
  { no: 1, name: "pid", kind: "scalar", T: T.INT32 },
]);
export const EndEvent = proto3.makeMessageType("sandbox.v1.EndEvent", [
  { no: 1, name: "exit_code", jsonName: "exitCode", kind: "scalar", T: T.INT32 },
  { no: 2, name: "exited", kind: "scalar", T: T.BOOL },
  { no: 3, name: "signal", kind: "scalar", T: T.INT32 },
  { no: 4, name: "status", kind: "scalar", T: T.STRING },
  { no: 5, name: "timed_out", jsonName: "timedOut", kind: "scalar", T: T.BOOL },
]);
export const ExecResponse = proto3.makeMessageType("sandbox.v1.ExecResponse", [
  { no: 1, name: "start", kind: "message", T: StartEvent },
  { no: 2, name: "stdout", kind: "scalar", T: T.BYTES },
  { no: 3, name: "stderr", kind: "scalar", T: T.BYTES },
  { no: 4, name: "keepalive", kind: "message", T: Keepalive },
  { no: 5, name: "end", kind: "message", T: EndEvent },
]);

export const RunCodeRequest = proto3.makeMessageType("sandbox.v1.RunCodeRequest", [
  { no: 1, name: "code", kind: "scalar", T: T.STRING },
  { no: 2, name: "language", kind: "scalar", T: T.STRING },
  { no: 3, name: "context", kind: "scalar", T: T.STRING },
  { no: 4, name: "envs", kind: "map", K: T.STRING, V: { kind: "scalar", T: T.STRING } },
  { no: 5, name: "timeout", kind: "scalar", T: T.DOUBLE },
]);
export const CodeResult = proto3.makeMessageType("sandbox.v1.CodeResult", [
  { no: 1, name: "is_main_result", kind: "scalar", T: T.BOOL },
  { no: 2, name: "data", kind: "message", T: Struct },
  { no: 3, name: "metadata", kind: "message", T: Struct },
  { no: 4, name: "id", kind: "message", T: Value },
]);
export const CodeError = proto3.makeMessageType("sandbox.v1.CodeError", [
  { no: 1, name: "name", kind: "scalar", T: T.STRING },
  { no: 2, name: "value", kind: "scalar", T: T.STRING },
  { no: 3, name: "traceback", kind: "message", T: Value },
  { no: 4, name: "id", kind: "message", T: Value },
]);
export const CodeEnd = proto3.makeMessageType("sandbox.v1.CodeEnd", [
  { no: 1, name: "execution_count", jsonName: "executionCount", kind: "scalar", T: T.INT32 },
  { no: 2, name: "status", kind: "scalar", T: T.STRING },
]);
export const RunCodeResponse = proto3.makeMessageType("sandbox.v1.RunCodeResponse", [
  { no: 1, name: "stdout", kind: "scalar", T: T.STRING },
  { no: 2, name: "stderr", kind: "scalar", T: T.STRING },
  { no: 3, name: "result", kind: "message", T: CodeResult },
  { no: 4, name: "error", kind: "message", T: CodeError },
  { no: 5, name: "end", kind: "message", T: CodeEnd },
  { no: 6, name: "keepalive", kind: "message", T: Keepalive },
]);

export const EntryInfo = proto3.makeMessageType("sandbox.v1.EntryInfo", [
  { no: 1, name: "name", kind: "scalar", T: T.STRING },
  { no: 2, name: "path", kind: "scalar", T: T.STRING },
  { no: 3, name: "type", kind: "scalar", T: T.STRING },
  { no: 4, name: "size", kind: "scalar", T: T.INT64 },
  { no: 5, name: "mode", kind: "scalar", T: T.UINT32 },
  { no: 6, name: "permissions", kind: "scalar", T: T.STRING },
  { no: 7, name: "uid", kind: "scalar", T: T.UINT32 },
  { no: 8, name: "gid", kind: "scalar", T: T.UINT32 },
  { no: 9, name: "owner", kind: "scalar", T: T.STRING },
  { no: 10, name: "group", kind: "scalar", T: T.STRING },
  { no: 11, name: "mtime", kind: "scalar", T: T.STRING },
  { no: 12, name: "symlink_target", kind: "scalar", T: T.STRING },
]);

export const ReadFileRequest = proto3.makeMessageType("sandbox.v1.ReadFileRequest", [
  { no: 1, name: "path", kind: "scalar", T: T.STRING },
  { no: 2, name: "offset", kind: "scalar", T: T.INT64 },
  { no: 3, name: "length", kind: "scalar", T: T.INT64 },
]);
export const ReadFileResponse = proto3.makeMessageType("sandbox.v1.ReadFileResponse", [
  { no: 1, name: "size", kind: "scalar", T: T.INT64 },
  { no: 2, name: "data", kind: "scalar", T: T.BYTES },
  { no: 3, name: "keepalive", kind: "message", T: Keepalive },
]);
export const WriteFileRequest = proto3.makeMessageType("sandbox.v1.WriteFileRequest", [
  { no: 1, name: "path", kind: "scalar", T: T.STRING },
  { no: 2, name: "data", kind: "scalar", T: T.BYTES },
  { no: 3, name: "mode", kind: "scalar", T: T.UINT32 },
  { no: 4, name: "append", kind: "scalar", T: T.BOOL },
]);
export const WriteFileResponse = proto3.makeMessageType("sandbox.v1.WriteFileResponse", [
  { no: 1, name: "path", kind: "scalar", T: T.STRING },
  { no: 2, name: "bytes", kind: "scalar", T: T.INT64 },
]);
export const ListRequest = proto3.makeMessageType("sandbox.v1.ListRequest", [
  { no: 1, name: "path", kind: "scalar", T: T.STRING },
  { no: 2, name: "depth", kind: "scalar", T: T.UINT32 },
]);
export const ListResponse = proto3.makeMessageType("sandbox.v1.ListResponse", [
  { no: 1, name: "entries", kind: "message", T: EntryInfo, repeated: true },
  { no: 2, name: "truncated", kind: "scalar", T: T.BOOL },
]);
export const PathRequest = proto3.makeMessageType("sandbox.v1.PathRequest", [
  { no: 1, name: "path", kind: "scalar", T: T.STRING },
  { no: 2, name: "recursive", kind: "scalar", T: T.BOOL },
  { no: 3, name: "parents", kind: "scalar", T: T.BOOL },
]);
export const EntryResponse = proto3.makeMessageType("sandbox.v1.EntryResponse", [
  { no: 1, name: "entry", kind: "message", T: EntryInfo },
]);
export const RenameRequest = proto3.makeMessageType("sandbox.v1.RenameRequest", [
  { no: 1, name: "from", kind: "scalar", T: T.STRING },
  { no: 2, name: "to", kind: "scalar", T: T.STRING },
]);

export const SandboxService = {
  typeName: "sandbox.v1.Sandbox",
  methods: {
    execStream: { name: "ExecStream", I: ExecRequest, O: ExecResponse, kind: MethodKind.ServerStreaming },
    runCodeStream: { name: "RunCodeStream", I: RunCodeRequest, O: RunCodeResponse, kind: MethodKind.ServerStreaming },
    readFile: { name: "ReadFile", I: ReadFileRequest, O: ReadFileResponse, kind: MethodKind.ServerStreaming },
    writeFile: { name: "WriteFile", I: WriteFileRequest, O: WriteFileResponse, kind: MethodKind.ClientStreaming },
    list: { name: "List", I: ListRequest, O: ListResponse, kind: MethodKind.Unary },
    stat: { name: "Stat", I: PathRequest, O: EntryResponse, kind: MethodKind.Unary },
    remove: { name: "Remove", I: PathRequest, O: EntryResponse, kind: MethodKind.Unary },
    mkdir: { name: "Mkdir", I: PathRequest, O: EntryResponse, kind: MethodKind.Unary },
    rename: { name: "Rename", I: RenameRequest, O: EntryResponse, kind: MethodKind.Unary },
  },
};
