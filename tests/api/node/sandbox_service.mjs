// sandbox.v1.Sandbox, the Mitos contract's service (proto/sandbox/v1/sandbox.proto of
// the public Mitos repository), written by hand as @bufbuild/protobuf message types
// for the Connect JSON codec: every message and RPC of the proto, field numbers and
// names as there (protojson turns them into lowerCamelCase on the wire).
import { proto3, ScalarType as T, MethodKind } from "@bufbuild/protobuf";

const msg = (name, fields) => proto3.makeMessageType("sandbox.v1." + name, fields);
const str = (no, name) => ({ no, name, kind: "scalar", T: T.STRING });
const oneof = (f) => ({ ...f, oneof: "msg" });

export const WindowSize = msg("WindowSize", [
  { no: 1, name: "cols", kind: "scalar", T: T.UINT32 },
  { no: 2, name: "rows", kind: "scalar", T: T.UINT32 },
]);
export const PtyOptions = msg("PtyOptions", [str(1, "term"), { no: 2, name: "size", kind: "message", T: WindowSize }]);
export const EnvVar = msg("EnvVar", [str(1, "key"), str(2, "value")]);
const execFields = [
  str(1, "command"),
  { no: 2, name: "args", kind: "scalar", T: T.STRING, repeated: true },
  { no: 3, name: "env", kind: "message", T: EnvVar, repeated: true },
  str(4, "cwd"),
  { no: 5, name: "timeout_seconds", kind: "scalar", T: T.INT32 },
];
export const ExecOpen = msg("ExecOpen", [...execFields, { no: 6, name: "pty", kind: "message", T: PtyOptions }]);
export const ExecRequest = msg("ExecRequest", [
  oneof({ no: 1, name: "open", kind: "message", T: ExecOpen }),
  oneof({ no: 2, name: "stdin", kind: "scalar", T: T.BYTES }),
  oneof({ no: 3, name: "resize", kind: "message", T: WindowSize }),
  oneof({ no: 4, name: "stdin_close", kind: "scalar", T: T.BOOL }),
]);
export const ExecExit = msg("ExecExit", [
  { no: 1, name: "exit_code", kind: "scalar", T: T.INT32 },
  { no: 2, name: "exec_time_ms", kind: "scalar", T: T.DOUBLE },
  str(3, "error"),
]);
export const ExecResponse = msg("ExecResponse", [
  oneof({ no: 1, name: "stdout", kind: "scalar", T: T.BYTES }),
  oneof({ no: 2, name: "stderr", kind: "scalar", T: T.BYTES }),
  oneof({ no: 3, name: "exit", kind: "message", T: ExecExit }),
]);
export const ExecStreamRequest = msg("ExecStreamRequest", execFields);

export const ReadFileRequest = msg("ReadFileRequest", [str(1, "path")]);
export const Chunk = msg("Chunk", [
  { no: 1, name: "data", kind: "scalar", T: T.BYTES },
  { no: 2, name: "eof", kind: "scalar", T: T.BOOL },
]);
export const WriteFileOpen = msg("WriteFileOpen", [str(1, "path"), { no: 2, name: "mode", kind: "scalar", T: T.UINT32 }]);
export const WriteFileRequest = msg("WriteFileRequest", [
  oneof({ no: 1, name: "open", kind: "message", T: WriteFileOpen }),
  oneof({ no: 2, name: "data", kind: "scalar", T: T.BYTES }),
]);
export const WriteFileResult = msg("WriteFileResult", [{ no: 1, name: "bytes_written", kind: "scalar", T: T.INT64 }]);
export const ListRequest = msg("ListRequest", [
  str(1, "parent"), { no: 2, name: "page_size", kind: "scalar", T: T.INT32 }, str(3, "page_token"), str(4, "filter"),
]);
export const FileInfo = msg("FileInfo", [
  str(1, "name"), str(2, "path"),
  { no: 3, name: "is_dir", kind: "scalar", T: T.BOOL },
  { no: 4, name: "size", kind: "scalar", T: T.INT64 },
  { no: 5, name: "mode", kind: "scalar", T: T.UINT32 },
  { no: 6, name: "modified_at_unix", kind: "scalar", T: T.INT64 },
]);
export const ListResponse = msg("ListResponse", [
  { no: 1, name: "entries", kind: "message", T: FileInfo, repeated: true }, str(2, "next_page_token"),
]);
export const StatRequest = msg("StatRequest", [str(1, "path")]);
const enumType = (name, names) => proto3.makeEnumType("sandbox.v1." + name, names.map((n, no) => ({ no, name: n })));
export const ArchiveDirection = enumType("ArchiveRequest.Direction", ["DIRECTION_UNSPECIFIED", "DOWNLOAD", "UNTAR"]);
export const ArchiveRequest = msg("ArchiveRequest", [str(1, "path"), { no: 2, name: "direction", kind: "enum", T: ArchiveDirection }]);
export const WatchRequest = msg("WatchRequest", [str(1, "path"), { no: 2, name: "recursive", kind: "scalar", T: T.BOOL }]);
export const FsEventKind = enumType("FsEvent.Kind", ["KIND_UNSPECIFIED", "CREATE", "MODIFY", "DELETE", "RENAME"]);
export const FsEvent = msg("FsEvent", [{ no: 1, name: "kind", kind: "enum", T: FsEventKind }, str(2, "path"), str(3, "new_path")]);
export const ProcessesRequest = msg("ProcessesRequest", []);
export const ProcessInfo = msg("ProcessInfo", [
  { no: 1, name: "pid", kind: "scalar", T: T.INT32 }, { no: 2, name: "ppid", kind: "scalar", T: T.INT32 },
  str(3, "command"), str(4, "state"), { no: 5, name: "cpu_percent", kind: "scalar", T: T.DOUBLE },
  { no: 6, name: "rss_bytes", kind: "scalar", T: T.INT64 },
]);
export const ProcessList = msg("ProcessList", [{ no: 1, name: "processes", kind: "message", T: ProcessInfo, repeated: true }]);
export const SignalRequest = msg("SignalRequest", [
  { no: 1, name: "pid", kind: "scalar", T: T.INT32 }, { no: 2, name: "signal", kind: "scalar", T: T.INT32 },
]);
export const SignalResponse = msg("SignalResponse", []);
export const PortForwardOpen = msg("PortForwardOpen", [{ no: 1, name: "port", kind: "scalar", T: T.UINT32 }]);
export const Frame = msg("Frame", [
  oneof({ no: 1, name: "open", kind: "message", T: PortForwardOpen }),
  oneof({ no: 2, name: "data", kind: "scalar", T: T.BYTES }),
  oneof({ no: 3, name: "close", kind: "scalar", T: T.BOOL }),
]);
export const ForkRequest = msg("ForkRequest", [
  { no: 1, name: "count", kind: "scalar", T: T.INT32 }, { no: 2, name: "env", kind: "message", T: EnvVar, repeated: true },
]);
export const Operation = msg("Operation", [str(1, "name"), { no: 2, name: "done", kind: "scalar", T: T.BOOL }]);
export const CheckpointRequest = msg("CheckpointRequest", [str(1, "workspace"), str(2, "message")]);
export const Revision = msg("Revision", [str(1, "name"), str(2, "digest")]);
export const ExtendRequest = msg("ExtendRequest", [{ no: 1, name: "additional_seconds", kind: "scalar", T: T.INT64 }]);
export const Lease = msg("Lease", [{ no: 1, name: "expires_at_unix", kind: "scalar", T: T.INT64 }]);
export const BudgetRequest = msg("BudgetRequest", []);
export const Allowance = msg("Allowance", [
  { no: 1, name: "remaining", kind: "scalar", T: T.INT64 }, { no: 2, name: "limit", kind: "scalar", T: T.INT64 },
]);
export const BudgetStatus = msg("BudgetStatus", [
  { no: 1, name: "fork", kind: "message", T: Allowance },
  { no: 2, name: "checkpoint", kind: "message", T: Allowance },
  { no: 3, name: "lifetime_extension", kind: "message", T: Allowance },
]);
export const VitalsRequest = msg("VitalsRequest", [{ no: 1, name: "interval_seconds", kind: "scalar", T: T.INT32 }]);
export const GuestVitals = msg("GuestVitals", [
  { no: 1, name: "sampled_at_unix", kind: "scalar", T: T.INT64 },
  { no: 2, name: "cpu_percent", kind: "scalar", T: T.DOUBLE },
  { no: 3, name: "cpu_steal_percent", kind: "scalar", T: T.DOUBLE },
  { no: 4, name: "mem_used_bytes", kind: "scalar", T: T.INT64 },
  { no: 5, name: "mem_total_bytes", kind: "scalar", T: T.INT64 },
  { no: 6, name: "mem_balloon_bytes", kind: "scalar", T: T.INT64 },
  { no: 7, name: "process_count", kind: "scalar", T: T.INT32 },
]);
const runCodeFields = [str(1, "code"), str(2, "language"), { no: 3, name: "timeout_seconds", kind: "scalar", T: T.INT64 }];
export const RunCodeOpen = msg("RunCodeOpen", runCodeFields);
export const RunCodeRequest = msg("RunCodeRequest", [
  oneof({ no: 1, name: "open", kind: "message", T: RunCodeOpen }),
  oneof({ no: 2, name: "stdin", kind: "scalar", T: T.BYTES }),
]);
export const RunCodeStreamRequest = msg("RunCodeStreamRequest", runCodeFields);
export const RunResult = msg("RunResult", [
  str(1, "text"), { no: 2, name: "data", kind: "map", K: T.STRING, V: { kind: "scalar", T: T.BYTES } },
]);
export const RunError = msg("RunError", [
  str(1, "name"), str(2, "value"), { no: 3, name: "traceback", kind: "scalar", T: T.STRING, repeated: true },
]);
export const RunCodeResponse = msg("RunCodeResponse", [
  oneof({ no: 1, name: "stdout", kind: "scalar", T: T.BYTES }),
  oneof({ no: 2, name: "stderr", kind: "scalar", T: T.BYTES }),
  oneof({ no: 3, name: "result", kind: "message", T: RunResult }),
  oneof({ no: 4, name: "error", kind: "message", T: RunError }),
  oneof({ no: 5, name: "exit_code", kind: "scalar", T: T.INT32 }),
]);
export const MkdirRequest = msg("MkdirRequest", [str(1, "path")]);
export const MkdirResponse = msg("MkdirResponse", []);
export const RemoveRequest = msg("RemoveRequest", [str(1, "path"), { no: 2, name: "recursive", kind: "scalar", T: T.BOOL }]);
export const RemoveResponse = msg("RemoveResponse", []);
export const UploadOpen = msg("UploadOpen", [str(1, "dest")]);
export const UploadRequest = msg("UploadRequest", [
  oneof({ no: 1, name: "open", kind: "message", T: UploadOpen }),
  oneof({ no: 2, name: "chunk", kind: "scalar", T: T.BYTES }),
]);
export const UploadResult = msg("UploadResult", [{ no: 1, name: "bytes_written", kind: "scalar", T: T.INT64 }]);

const K = MethodKind;
const rpc = (name, I, O, kind) => ({ name, I, O, kind });
export const SandboxService = {
  typeName: "sandbox.v1.Sandbox",
  methods: {
    exec: rpc("Exec", ExecRequest, ExecResponse, K.BiDiStreaming),
    execStream: rpc("ExecStream", ExecStreamRequest, ExecResponse, K.ServerStreaming),
    readFile: rpc("ReadFile", ReadFileRequest, Chunk, K.ServerStreaming),
    writeFile: rpc("WriteFile", WriteFileRequest, WriteFileResult, K.ClientStreaming),
    list: rpc("List", ListRequest, ListResponse, K.Unary),
    stat: rpc("Stat", StatRequest, FileInfo, K.Unary),
    archive: rpc("Archive", ArchiveRequest, Chunk, K.ServerStreaming),
    watch: rpc("Watch", WatchRequest, FsEvent, K.ServerStreaming),
    processes: rpc("Processes", ProcessesRequest, ProcessList, K.Unary),
    signal: rpc("Signal", SignalRequest, SignalResponse, K.Unary),
    portForward: rpc("PortForward", Frame, Frame, K.BiDiStreaming),
    fork: rpc("Fork", ForkRequest, Operation, K.Unary),
    checkpoint: rpc("Checkpoint", CheckpointRequest, Revision, K.Unary),
    extendLifetime: rpc("ExtendLifetime", ExtendRequest, Lease, K.Unary),
    budget: rpc("Budget", BudgetRequest, BudgetStatus, K.Unary),
    vitals: rpc("Vitals", VitalsRequest, GuestVitals, K.ServerStreaming),
    runCode: rpc("RunCode", RunCodeRequest, RunCodeResponse, K.BiDiStreaming),
    runCodeStream: rpc("RunCodeStream", RunCodeStreamRequest, RunCodeResponse, K.ServerStreaming),
    mkdir: rpc("Mkdir", MkdirRequest, MkdirResponse, K.Unary),
    remove: rpc("Remove", RemoveRequest, RemoveResponse, K.Unary),
    upload: rpc("Upload", UploadRequest, UploadResult, K.ClientStreaming),
  },
};
