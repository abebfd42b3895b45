"""A small synchronous client of the mitos-agent protocol (agent/PROTOCOL.md) over a
VM's virtio-vsock host socket (Firecracker's "CONNECT <port>" convention). Stdlib only;
one operation at a time, which is all the end-to-end suite needs."""
import base64
import json
import socket
import struct
import time

HEADER = struct.Struct(">IIBBBB")
HELLO, OPEN, DATA, EVENT, WINDOW, END, CANCEL, ERROR = range(1, 9)
FIN = 1
WINDOW_SIZE = 262144


class AgentError(Exception):
    pass


def vsock_connect(path, port, timeout):
    """Connects to guest port `port` through the VM's host socket; None while the guest
    is not listening yet (the device closes the connection)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(f"CONNECT {port}\n".encode())
        line = b""
        while not line.endswith(b"\n"):
            c = s.recv(1)
            if not c:
                raise OSError("closed")
            line += c
        if not line.startswith(b"OK "):
            raise OSError(line.decode(errors="replace"))
        return s
    except OSError:
        s.close()
        return None


class Agent:
    def __init__(self, sock, timeout=120):
        self.s = sock
        self.s.settimeout(timeout)
        self.buf = b""
        self.next_id = 1
        self.consumed = {}
        self._send(0, HELLO, json.dumps({"min_version": 1, "max_version": 1}).encode())
        stream, ftype, _, _, payload = self._recv()
        if ftype != HELLO:
            raise AgentError(f"expected HELLO, got frame type {ftype}: {payload[:200]!r}")
        self.hello = json.loads(payload)

    @classmethod
    def connect(cls, vsock_path, port=52, deadline=None, timeout=120):
        """Retries until the agent answers HELLO or the deadline passes."""
        while True:
            s = vsock_connect(vsock_path, port, timeout=10)
            if s is not None:
                try:
                    return cls(s, timeout)
                except (OSError, AgentError, ValueError):
                    s.close()
            if deadline is not None and time.time() > deadline:
                raise AgentError(f"no agent on vsock port {port} of {vsock_path}")
            time.sleep(0.2)

    def close(self):
        self.s.close()

    def _send(self, stream, ftype, payload=b"", flags=0, channel=0):
        self.s.sendall(HEADER.pack(len(payload), stream, ftype, flags, channel, 0) + payload)

    def _recv(self):
        while True:
            if len(self.buf) >= HEADER.size:
                length, stream, ftype, flags, channel, _ = HEADER.unpack_from(self.buf)
                if len(self.buf) >= HEADER.size + length:
                    payload = self.buf[HEADER.size:HEADER.size + length]
                    self.buf = self.buf[HEADER.size + length:]
                    return stream, ftype, flags, channel, payload
            chunk = self.s.recv(65536)
            if not chunk:
                raise AgentError("connection closed by the agent")
            self.buf += chunk

    def _open(self, op, **args):
        sid = self.next_id
        self.next_id += 2
        self._send(sid, OPEN, json.dumps(dict(op=op, **args)).encode())
        return sid

    def _stream(self, sid):
        """Yields (type, flags, channel, payload) of stream sid until its END (included)."""
        while True:
            stream, ftype, flags, channel, payload = self._recv()
            if ftype == ERROR:
                raise AgentError(f"agent ERROR notice: {payload.decode(errors='replace')}")
            if stream != sid:
                continue
            if ftype == DATA and payload:
                self.consumed[sid] = self.consumed.get(sid, 0) + len(payload)
                if self.consumed[sid] >= WINDOW_SIZE // 2:
                    self._send(sid, WINDOW, struct.pack(">I", self.consumed[sid]))
                    self.consumed[sid] = 0
            yield ftype, flags, channel, payload
            if ftype == END:
                return

    def call(self, op, **args):
        """A unary operation: its END object."""
        sid = self._open(op, **args)
        for ftype, _, _, payload in self._stream(sid):
            if ftype == END:
                return json.loads(payload)

    def exec(self, argv=None, cmd=None, **args):
        """(stdout bytes, stderr bytes, END object)."""
        if argv is not None:
            args["argv"] = argv
        if cmd is not None:
            args["cmd"] = cmd
        sid = self._open("exec", **args)
        out = {1: b"", 2: b""}
        for ftype, _, channel, payload in self._stream(sid):
            if ftype == DATA and channel in out:
                out[channel] += payload
            elif ftype == END:
                return out[1], out[2], json.loads(payload)

    def write_file(self, path, data, **args):
        sid = self._open("write", path=path, **args)
        for i in range(0, len(data), 65536):
            self._send(sid, DATA, data[i:i + 65536])
        self._send(sid, DATA, b"", flags=FIN)
        for ftype, _, _, payload in self._stream(sid):
            if ftype == END:
                return json.loads(payload)

    def read_file(self, path, **args):
        """(bytes, END object)."""
        sid = self._open("read", path=path, **args)
        data = b""
        for ftype, _, _, payload in self._stream(sid):
            if ftype == DATA:
                data += payload
            elif ftype == END:
                return data, json.loads(payload)

    def run_code(self, code, **args):
        """(stdout, results, END object); results are the "result" and "error" events."""
        sid = self._open("run_code", code=code, **args)
        stdout, events = b"", []
        for ftype, _, channel, payload in self._stream(sid):
            if ftype == DATA and channel == 1:
                stdout += payload
            elif ftype == EVENT:
                events.append(json.loads(payload))
            elif ftype == END:
                return stdout, events, json.loads(payload)


def entropy(n=64):
    with open("/dev/urandom", "rb") as f:
        return base64.b64encode(f.read(n)).decode()
