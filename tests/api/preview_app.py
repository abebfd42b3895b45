"""The upstream of the preview tests, run inside a sandbox (stdlib only):
streaming (chunked and SSE) responses, a body echo, the headers it received, and
a WebSocket echo.

usage: python3 preview_app.py PORT"""
import base64
import hashlib
import http.server
import json
import struct
import sys
import time

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, ctype="application/octet-stream"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(5):
                b = ("tick %d\n" % i).encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(b), b))
                self.wfile.flush()
                time.sleep(0.4)
            self.wfile.write(b"0\r\n\r\n")
        elif self.path.startswith("/sse"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            for i in range(4):
                self.wfile.write(b"data: event %d\n\n" % i)
                self.wfile.flush()
                time.sleep(0.4)
            self.close_connection = True
        elif self.path.startswith("/headers"):
            body = json.dumps({"path": self.path, "method": self.command,
                               "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
            self.reply(200, body, "application/json")
        elif self.path.startswith("/cookies"):
            self.send_response(200)
            self.send_header("Set-Cookie", "a=1; Domain=preview.test; Path=/; HttpOnly")
            self.send_header("Set-Cookie", "b=2; path=/x; domain=.preview.test")
            self.send_header("Set-Cookie", "c=3; Domainish=x")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        elif self.path.startswith("/rawhead/"):
            # Heads a proxy in front could read two ways (and one it can read one way).
            heads = [b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                     b"HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 2\r\n",
                     b"HTTP/1.1 200 OK\r\nX-A: one\nContent-Length: 2\r\n",
                     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n",
                     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n",
                     b"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 2\r\n",
                     b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nTransfer-Encoding: chunked\r\n"]
            self.wfile.write(heads[int(self.path.split("/")[2])] + b"\r\n2\r\nok\r\n0\r\n\r\n")
            self.wfile.flush()
            self.close_connection = True
        elif self.path.startswith("/ws"):
            self.websocket()
        else:
            self.reply(404, b"no such page\n", "text/plain")

    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                n = int(self.rfile.readline().split(b";")[0], 16)
                if n == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(n)
                self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.reply(200, body)

    def websocket(self):
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        r, w = self.rfile, self.wfile
        while True:
            h = r.read(2)
            if len(h) < 2:
                break
            op, n = h[0] & 0x0F, h[1] & 0x7F
            if n == 126:
                n = struct.unpack(">H", r.read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", r.read(8))[0]
            mask = r.read(4) if h[1] & 0x80 else b"\0\0\0\0"
            data = bytes(c ^ mask[i % 4] for i, c in enumerate(r.read(n)))
            if op == 9:
                op = 10
            n = len(data)
            head = struct.pack(">BB", 0x80 | op, n) if n < 126 else (
                struct.pack(">BBH", 0x80 | op, 126, n) if n < 65536 else struct.pack(">BBQ", 0x80 | op, 127, n))
            w.write(head + data)
            w.flush()
            if op == 8:
                break
        self.close_connection = True


if __name__ == "__main__":
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    srv.daemon_threads = True
    srv.serve_forever()
