"""The HTTP server of a ContainerPub Python function: it serves HTTP/1.1 on
$PORT (standard library only) and hands every request to `handle` in
handler.py. It is yours to read and change; the platform only runs
`python3 server.py` with the bundle in /app and /app/vendor on the path.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import handler


class Request:
    """What `handle` gets: method, path, query (dict), headers (dict with
    lower-case names), body (bytes)."""

    def __init__(self, method, target, headers, body):
        url = urlsplit(target)
        self.method = method
        self.path = url.path
        self.query = dict(parse_qsl(url.query))
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body


def to_response(result):
    """`handle` returns a body (str, bytes, dict/list as JSON) or a tuple
    (status, headers, body)."""
    status, headers = 200, {}
    if isinstance(result, tuple):
        status, headers, result = result
    if isinstance(result, (dict, list)):
        headers.setdefault("content-type", "application/json")
        result = json.dumps(result)
    if isinstance(result, str):
        headers.setdefault("content-type", "text/plain; charset=utf-8")
        result = result.encode()
    return status, headers, result or b""


class Server(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the proxy reuses connections
    # Headers and body leave in two writes: with Nagle on, the body waited
    # for the proxy's delayed ACK (~40 ms per call on a kept-alive connection).
    disable_nagle_algorithm = True

    def serve(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            status, headers, payload = to_response(
                handler.handle(Request(self.command, self.path, self.headers, body))
            )
        except Exception as exc:  # the caller gets a 500, the log the reason
            print(f"handler failed: {exc!r}", file=sys.stderr)
            status, headers, payload = 500, {"content-type": "text/plain"}, b"internal error\n"
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = serve

    def log_message(self, *args):
        pass  # one line per call would flood the instance's log


if __name__ == "__main__":
    ThreadingHTTPServer.daemon_threads = True
    # The listen backlog (socketserver's default is 5): a burst of the
    # proxy's connections overflowed it and waited for SYN retries (1 s, 3 s).
    ThreadingHTTPServer.request_queue_size = 128
    ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Server).serve_forever()
