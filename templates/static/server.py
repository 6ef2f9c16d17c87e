"""Serves the files under public/ over HTTP/1.1 on $PORT (GET and HEAD; an
index.html for a directory). Put your site in public/ and `cpub deploy`.
"""

import os
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "public")


class Site(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the proxy reuses connections
    disable_nagle_algorithm = True  # headers and body are separate writes (see the python template)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 128  # listen backlog (socketserver's default: 5)
    server = ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), partial(Site, directory=ROOT))
    server.serve_forever()
