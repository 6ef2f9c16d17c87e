"""The isolation probe of e2e/tests/languages.rs for the python base: serves
HTTP on $PORT; every answer is its report, one `key value` line each (the
same lines as probe.rs and probe.js), and it imports a vendored module."""
import errno, os, socket
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qsl
import vendored_dep

def reach(target):
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return "connected"
    except OSError as e:
        return errno.errorcode.get(e.errno, type(e).__name__) if e.errno else type(e).__name__

def write_root():
    try:
        open("/app/written", "w").close()
        return "written"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))

def report(targets):
    with open("/proc/self/uid_map") as f:
        uid_map = " ".join(f.readline().split())
    with open("/proc/self/status") as f:
        status = f.read()
    targets = [t for t in targets.split(",") if t]
    with ThreadPoolExecutor(max(1, len(targets))) as pool:
        reached = list(pool.map(reach, targets))
    lines = [f"dep {vendored_dep.VALUE}", f"root {write_root()}", f"uid_map {uid_map}", status.rstrip("\n")]
    lines += [f"reach {t} {r}" for t, r in zip(targets, reached)]
    return "\n".join(lines) + "\n"

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        q = dict(parse_qsl(urlsplit(self.path).query))
        body = report(q.get("targets", "")).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
