// The HTTP server of a ContainerPub Node.js function: it serves HTTP/1.1 on
// $PORT (node's own http module) and hands every request to `handle` in
// handler.js. It is yours to read and change; the platform only runs
// `node server.js` with the bundle (and its node_modules) in /app.
"use strict";
const http = require("node:http");
const { handle } = require("./handler");

// `handle` returns (or resolves to) a body (string, Buffer, or an object
// sent as JSON) or { status, headers, body }.
function toResponse(result) {
  let status = 200, headers = {}, body = result;
  if (result && typeof result === "object" && !Buffer.isBuffer(result) && "body" in result) {
    ({ status = 200, headers = {}, body } = result);
  }
  if (body !== null && typeof body === "object" && !Buffer.isBuffer(body)) {
    headers["content-type"] ??= "application/json";
    body = JSON.stringify(body);
  }
  if (typeof body === "string") {
    headers["content-type"] ??= "text/plain; charset=utf-8";
    body = Buffer.from(body);
  }
  return { status, headers, body: body ?? Buffer.alloc(0) };
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", async () => {
    const url = new URL(req.url, "http://function");
    const request = {
      method: req.method,
      path: url.pathname,
      query: Object.fromEntries(url.searchParams),
      headers: req.headers,
      body: Buffer.concat(chunks),
    };
    let out;
    try {
      out = toResponse(await handle(request));
    } catch (err) {
      console.error("handler failed:", err);
      out = { status: 500, headers: { "content-type": "text/plain" }, body: Buffer.from("internal error\n") };
    }
    out.headers["content-length"] = out.body.length;
    res.writeHead(out.status, out.headers);
    res.end(req.method === "HEAD" ? undefined : out.body);
  });
});
server.keepAliveTimeout = 650_000; // the proxy decides when to close
server.listen(Number(process.env.PORT || 8080), "0.0.0.0");
