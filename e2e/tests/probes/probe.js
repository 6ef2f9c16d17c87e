// The isolation probe of e2e/tests/languages.rs for the node base: serves
// HTTP on $PORT; every answer is its report, one `key value` line each (the
// same lines as probe.rs and probe.py), and it requires a vendored module.
"use strict";
const http = require("node:http"), net = require("node:net"), fs = require("node:fs");
const dep = require("vendored-dep");
function reach(target) {
  const i = target.lastIndexOf(":");
  return new Promise((done) => {
    const s = net.connect({ host: target.slice(0, i), port: Number(target.slice(i + 1)) });
    const t = setTimeout(() => { s.destroy(); done("TimedOut"); }, 2000);
    s.on("connect", () => { clearTimeout(t); s.destroy(); done("connected"); });
    s.on("error", (e) => { clearTimeout(t); done(e.code || "error"); });
  });
}
function writeRoot() {
  try { fs.writeFileSync("/app/written", "x"); return "written"; } catch (e) { return e.code; }
}
http.createServer(async (req, res) => {
  const targets = (new URL(req.url, "http://x").searchParams.get("targets") || "").split(",").filter(Boolean);
  const reached = await Promise.all(targets.map(reach));
  const uidMap = fs.readFileSync("/proc/self/uid_map", "utf8").split("\n")[0].trim().split(/\s+/).join(" ");
  const lines = [`dep ${dep.VALUE}`, `root ${writeRoot()}`, `uid_map ${uidMap}`,
    fs.readFileSync("/proc/self/status", "utf8").trimEnd()];
  targets.forEach((t, i) => lines.push(`reach ${t} ${reached[i]}`));
  const body = lines.join("\n") + "\n";
  res.writeHead(200, { "content-length": Buffer.byteLength(body) });
  res.end(body);
}).listen(Number(process.env.PORT), "0.0.0.0");
