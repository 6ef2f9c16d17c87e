// Your function: `handle(request)` is called for every call (it may be async).
//
// request.method, request.path, request.query (object), request.headers
// (object, lower-case names), request.body (Buffer). Return a body (string,
// Buffer, or an object sent as JSON) or { status, headers, body }.
//
// Dependencies: list them in package.json and install them into
// node_modules/ before `cpub deploy` (builds have no network), see README.md.
"use strict";

exports.handle = async (request) => {
  const name = request.query.name ?? "world";
  return `hello ${name} from {{name}} (node)\n`;
};
