#!/usr/bin/env bash
# Checks the shipped Grafana dashboard (monitoring/grafana/containerpub.json):
# it is JSON, every panel that is not a row has at least one query, and every
# query parses as PromQL — each one is written as a recording rule with the
# dashboard's variables replaced by values (`$function` by its "All" value
# `.*`, `$__rate_interval` and `$__interval` by 5m, `$__range` by 1h) and the
# file is given to `promtool check rules`. That the metrics the queries use
# exist is checked on a live scrape by e2e/tests/executions.rs.
# scripts/test.sh runs it.   Usage: bash scripts/check-dashboard.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rules=$(mktemp --suffix=.yml)
trap 'rm -f "$rules"' EXIT
python3 - monitoring/grafana/containerpub.json "$rules" <<'PY'
import json, sys
dash = json.load(open(sys.argv[1]))
subs = {"$__rate_interval": "5m", "$__interval": "5m", "$__range": "1h", "$function": ".*"}
rules, empty = [], []
def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))
for p in panels(dash.get("panels", [])):
    if p.get("type") == "row":
        continue
    exprs = [t.get("expr", "") for t in p.get("targets", [])]
    if not any(e.strip() for e in exprs):
        empty.append(p.get("title", "?"))
    for e in exprs:
        for k, v in subs.items():
            e = e.replace(k, v)
        if "$" in e:
            sys.exit(f"check-dashboard: panel {p.get('title')!r}: a variable left in {e!r}")
        rules.append(e)
if empty:
    sys.exit(f"check-dashboard: panels without a query: {empty}")
if len(rules) < 20:
    sys.exit(f"check-dashboard: only {len(rules)} queries found")
with open(sys.argv[2], "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(rules):
        f.write(f"      - record: dashboard_query_{i}\n        expr: {json.dumps(e)}\n")
print(f"check-dashboard: {len(rules)} queries", file=sys.stderr)
PY
promtool check rules "$rules"
