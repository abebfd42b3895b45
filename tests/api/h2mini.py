"""A few HTTP/2 frames over a raw socket (h2c with prior knowledge), for the cases no
real client produces: a stream whose body stops, a window kept shut, conflicting
targets. Headers are sent as HPACK literals without Huffman coding; the answers are
read as frames (their header blocks are not decoded: bodies say what happened)."""
import socket
import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
SETTINGS_INITIAL_WINDOW_SIZE = 4


def _int7(n):
    assert n < 127
    return bytes([n])


def header_block(headers):
    """HPACK literal fields without indexing, names and values as they are."""
    out = b""
    for name, value in headers:
        n, v = name.encode(), value.encode()
        out += b"\x00" + _int7(len(n)) + n + _int7(len(v)) + v
    return out


class H2:
    def __init__(self, port, settings=()):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        body = b"".join(struct.pack(">HI", k, v) for k, v in settings)
        self.s.sendall(PREFACE + self.frame(SETTINGS, 0, 0, body))
        self.buf = b""

    @staticmethod
    def frame(ftype, flags, stream, payload=b""):
        return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload

    def send(self, ftype, flags, stream, payload=b""):
        self.s.sendall(self.frame(ftype, flags, stream, payload))

    def request(self, stream, method, path, extra=(), end=True, authority="x"):
        hs = [(":method", method), (":scheme", "http"), (":path", path)]
        if authority is not None:
            hs.append((":authority", authority))
        self.send(HEADERS, END_HEADERS | (END_STREAM if end else 0), stream, header_block(hs + list(extra)))

    def read_frame(self, timeout):
        """(type, flags, stream, payload), or None when the connection ended. Settings
        are acknowledged as they come."""
        self.s.settimeout(timeout)
        while True:
            while len(self.buf) >= 9:
                n = struct.unpack(">I", b"\0" + self.buf[:3])[0]
                if len(self.buf) < 9 + n:
                    break
                ftype, flags = self.buf[3], self.buf[4]
                stream = struct.unpack(">I", self.buf[5:9])[0] & 0x7FFFFFFF
                payload, self.buf = self.buf[9:9 + n], self.buf[9 + n:]
                if ftype == SETTINGS and not flags & ACK:
                    self.send(SETTINGS, ACK, 0)
                return ftype, flags, stream, payload
            got = self.s.recv(65536)
            if not got:
                return None
            self.buf += got

    def until(self, stream, timeout, want=None):
        """The frames of stream up to its end (END_STREAM, RST_STREAM) or to one of type
        want; fewer when the connection ends. socket.timeout when it all takes longer."""
        seen = []
        while True:
            f = self.read_frame(timeout)
            if f is None:
                return seen
            if f[2] != stream:
                continue
            seen.append(f)
            if f[0] in (want, RST_STREAM) or (f[0] in (DATA, HEADERS) and f[1] & END_STREAM):
                return seen

    def close(self):
        self.s.close()


def body_of(frames):
    return b"".join(p for t, _, _, p in frames if t == DATA)
