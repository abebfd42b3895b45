"""A small RFC 6455 WebSocket client for the tests (stdlib only): handshake,
masked frames, fragmentation, ping/pong and the close handshake, plus raw access
for malformed input."""
import base64
import hashlib
import os
import socket
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class HandshakeError(Exception):
    def __init__(self, status, head, body):
        super().__init__("handshake refused: %s" % status)
        self.status, self.head, self.body = status, head, body


def frame(opcode, payload=b"", fin=True, mask=True):
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack(">BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack(">BBH", b0, mbit | 126, n)
    else:
        head = struct.pack(">BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(c ^ key[i % 4] for i, c in enumerate(payload))
    return head + key + masked


class WebSocket:
    def __init__(self, host, port, path, headers=None, timeout=10, early=b""):
        """Connects and upgrades; early bytes are sent in the same write as the
        request (a client that does not wait for the 101)."""
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        h = {"Host": "%s:%d" % (host, port), "Upgrade": "websocket", "Connection": "Upgrade",
             "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"}
        h.update(headers or {})
        req = "GET %s HTTP/1.1\r\n" % path + "".join("%s: %s\r\n" % kv for kv in h.items()) + "\r\n"
        self.sock.sendall(req.encode() + early)
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.head = head.decode(errors="replace")
        status = int(self.head.split(" ", 2)[1]) if self.head.startswith("HTTP/1.") else 0
        self.headers = {}
        for line in self.head.split("\r\n")[1:]:
            k, _, v = line.partition(":")
            self.headers.setdefault(k.strip().lower(), v.strip())
        if status != 101:
            body = self.buf
            want = int(self.headers.get("content-length", "-1"))
            try:
                while want < 0 or len(body) < want:
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        break
                    body += chunk
            except socket.timeout:
                pass
            self.sock.close()
            raise HandshakeError(status, self.head, body)
        want = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        if self.headers.get("sec-websocket-accept") != want:
            raise AssertionError("bad Sec-WebSocket-Accept: %r" % self.headers)
        self.close_code = None

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self):
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self._read(8))[0]
        if b1 & 0x80:
            raise AssertionError("the server masked a frame")
        return bool(b0 & 0x80), b0 & 0x0F, self._read(n)

    def recv(self):
        """The next message: (opcode, payload); pings are answered on the way."""
        op, data = None, b""
        while True:
            fin, o, p = self.read_frame()
            if o == OP_PING:
                self.sock.sendall(frame(OP_PONG, p))
                continue
            if o in (OP_CLOSE, OP_PONG):
                if o == OP_CLOSE:
                    self.close_code = struct.unpack(">H", p[:2])[0] if len(p) >= 2 else None
                return o, p
            if o != OP_CONT:
                op = o
            data += p
            if fin:
                return op, data

    def send(self, data, opcode=None):
        if opcode is None:
            opcode = OP_TEXT if isinstance(data, str) else OP_BINARY
        self.sock.sendall(frame(opcode, data))

    def send_raw(self, b):
        self.sock.sendall(b)

    def close(self, code=1000):
        try:
            self.sock.sendall(frame(OP_CLOSE, struct.pack(">H", code)))
        except OSError:
            pass

    def shut(self):
        self.sock.close()
