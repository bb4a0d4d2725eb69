"""Collector benchmark: report intake (reports/s, p99 latency) on SQLite and PostgreSQL, and the render
time of the dashboard and /metrics for 1,000 hosts x 12 jobs.

The load comes from another process: wrk (Debian's `wrk`) with a Lua script that posts a new report
(unique id, the host's own token) per request, spread over `--hosts` agents, `--connections` at once.
Targets (issue 5): >= 1,000 reports/s on SQLite; dashboard and /metrics under 200 ms at 1,000 x 12.

    python bench/collector.py [--seconds 15] [--connections 32] [--hosts 200] [--out bench/results/collector.md]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from agent.collector.schema import validate  # noqa: E402
from agent.collector.storage import open_storage  # noqa: E402
from agent.collector.tokens import create_token  # noqa: E402

JOBS = ["db-analytics", "db-provisioning", "db-console", "db-credentials", "db-enstratus_console", "db-riak",
        "services-api", "services-console", "services-dispatcher", "services-km", "services-monitor",
        "services-worker"]

LUA = r"""
local hosts = {%(hosts)s}
local tokens = {%(tokens)s}
local jobs = {%(jobs)s}
local counter = 0
local thread_id = 0
local seqs = {}
function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
end
function request()
  counter = counter + 1
  local n = (counter * 7919 + tid * 104729) %% #hosts + 1
  seqs[n] = (seqs[n] or 0) + 1
  local job = jobs[(counter %% #jobs) + 1]
  local body = string.format('{"id":"b-%%d-%%d-%%d","host":"%%s","job":"%%s","type":"fs","trigger":"schedule",' ..
    '"status":"ok","changed":true,"snapshot":null,"started_at":"2026-11-27T10:00:00Z",' ..
    '"finished_at":"2026-11-27T10:00:05Z","files":120,"bytes":1048576,"new_bytes":4096,"errors":[],' ..
    '"warnings":[],"seq":%%d,"every":{"low":14400,"high":21600}}', tid, counter, os.time(), hosts[n], job,
    seqs[n] * 2 + tid)
  return wrk.format("POST", "/api/v1/reports", {["Authorization"] = "Bearer " .. tokens[n],
    ["Content-Type"] = "application/json"}, body)
end
function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%%d errors_status=%%d p50=%%d p99=%%d\n", summary.requests,
    summary.errors.status, latency:percentile(50), latency:percentile(99)))
end
"""


def start_collector(base: str, db: str) -> Tuple[subprocess.Popen, str]:
    log_path = os.path.join(base, f"collector-{time.monotonic_ns()}.log")
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen([sys.executable, "-m", "agent", "collector", "serve", "--listen", "127.0.0.1:0",
                             "--tokens", os.path.join(base, "tokens.toml"), "--db", db],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(log_path, errors="replace") as handle:
            match = re.search(r"listening on (http://\S+)", handle.read())
        if match:
            url = match.group(1)
            for _ in range(100):
                try:
                    if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                        return proc, url
                except httpx.TransportError:
                    time.sleep(0.05)
        time.sleep(0.05)
    with open(log_path, errors="replace") as handle:
        raise SystemExit(f"collector did not start: {handle.read()}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def stored_count(url: str) -> int:
    text = httpx.get(url + "/metrics", timeout=60).text
    return int(float(re.search(r"^backup_reports_total (\S+)$", text, re.M)[1]))


def intake(base: str, db: str, tokens: Dict[str, str], seconds: int, connections: int) -> dict:
    proc, url = start_collector(base, db)
    try:
        hosts = list(tokens)
        script = os.path.join(base, "post.lua")
        with open(script, "w") as handle:
            handle.write(LUA % {"hosts": ", ".join(json.dumps(h) for h in hosts),
                                "tokens": ", ".join(json.dumps(tokens[h]) for h in hosts),
                                "jobs": ", ".join(json.dumps(j) for j in JOBS)})
        before = stored_count(url)
        result = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, url],
                                capture_output=True, text=True, timeout=seconds + 120)
        match = re.search(r"RESULT requests=(\d+) errors_status=(\d+) p50=(\d+) p99=(\d+)", result.stdout)
        if not match:
            raise SystemExit(result.stdout + result.stderr)
        requests, bad, p50, p99 = (int(x) for x in match.groups())
        after = stored_count(url)
    finally:
        stop(proc)
    return {"requests": requests, "non_2xx": bad, "stored": after - before, "per_second": (after - before) / seconds,
            "p50_ms": p50 / 1000, "p99_ms": p99 / 1000}


def fill(db: str, hosts: int) -> None:
    """1,000 hosts x 12 jobs: a few reports each, straight into storage (the intake is measured above),
    received an hour ago: the steady state, where a page re-reads only the rows that changed lately."""
    storage = open_storage(db)
    now = time.time()
    batch = []
    for h in range(hosts):
        for j, job in enumerate(JOBS):
            for r in range(2):
                age = (h * 13 + j * 7 + r) % 30 * 3600
                finished = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - age))
                body = {"id": f"f-{h}-{j}-{r}", "host": f"node-{h:04d}", "job": job, "type": "fs",
                        "trigger": "schedule", "status": "failed" if (h + j + r) % 17 == 0 else "ok",
                        "changed": True, "snapshot": None, "started_at": finished, "finished_at": finished,
                        "files": 1, "bytes": 1, "new_bytes": 1, "errors": ["boom"] if (h + j + r) % 17 == 0 else [],
                        "warnings": [], "seq": j * 2 + r + 1,
                        "every": {"low": 14400, "high": 21600} if j < 2 else {"low": 86400, "high": 86400}}
                report, problems = validate(body)
                assert report is not None, problems
                batch.append(report)
        if len(batch) > 2000:
            storage.insert_many(batch, now - 3600)
            batch = []
    storage.insert_many(batch, now - 3600)
    storage.close()


def render_times(base: str, db: str, rounds: int = 15) -> Dict[str, float]:
    proc, url = start_collector(base, db)
    times: Dict[str, float] = {}
    try:
        with httpx.Client(timeout=60) as client:
            first = client.get(url + "/")  # the first page after start reads every row; later ones what changed
            times["cold"] = float(first.headers["server-timing"].partition("dur=")[2])
            for path in ("/", "/metrics", "/api/v1/status"):
                client.get(url + path)  # warm
                samples, renders = [], []
                for _ in range(rounds):
                    started = time.perf_counter()
                    response = client.get(url + path)
                    samples.append(time.perf_counter() - started)
                    assert response.status_code == 200
                    renders.append(float(response.headers["server-timing"].partition("dur=")[2]))
                times[path] = statistics.median(samples) * 1000
                times[path + " render"] = statistics.median(renders)
                times[path + " size"] = len(response.content)
    finally:
        stop(proc)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--skip-intake", action="store_true", help="only the render times")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--fleet", type=int, default=1000)
    parser.add_argument("--out", help="also write the results as Markdown to this file")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed (apt-get install wrk)")
    base = tempfile.mkdtemp(prefix="bench-collector-")
    tokens = {f"node-{n:04d}": create_token(os.path.join(base, "tokens.toml"), f"node-{n:04d}")
              for n in range(args.hosts)}
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from tests.fixtures.postgres import start_postgres

    pg = start_postgres()
    rows: List[str] = []
    try:
        engines = {"SQLite": f"sqlite:///{base}/intake.db", "PostgreSQL": pg.create_database("intake")}
        results = {} if args.skip_intake else {
            name: intake(base, db, tokens, args.seconds, args.connections) for name, db in engines.items()}
        fleet_db = f"sqlite:///{base}/fleet.db"
        fill(fleet_db, args.fleet)
        renders = render_times(base, fleet_db)
        fleet_pg = pg.create_database("fleet")
        fill(fleet_pg, args.fleet)
        renders_pg = render_times(base, fleet_pg)
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
    rows.append(f"Report intake: wrk, {args.connections} connections, {args.hosts} hosts, {args.seconds} s, "
                f"{os.cpu_count()} cores shared by load and collector\n")
    rows.append("| storage | reports/s stored | p50 | p99 | non-2xx | target |")
    rows.append("| --- | --- | --- | --- | --- | --- |")
    for name, result in results.items():
        target = ">= 1,000/s: " + ("met" if result["per_second"] >= 1000 else "NOT met") if name == "SQLite" else "-"
        rows.append(f"| {name} | {result['per_second']:.0f} | {result['p50_ms']:.1f} ms | {result['p99_ms']:.1f} ms"
                    f" | {result['non_2xx']} | {target} |")
    rows.append(f"\n{args.fleet} hosts x {len(JOBS)} jobs, median of 15 requests: render = the server's own time "
                "to build the response (its Server-Timing header: read, judge, format); request = the whole "
                "HTTP round trip as a client sees it, transfer and client parsing included\n")
    rows.append("| page | render SQLite | render PostgreSQL | request SQLite | request PostgreSQL | size | "
                "target: render < 200 ms |")
    rows.append("| --- | --- | --- | --- | --- | --- | --- |")
    for path in ("/", "/metrics", "/api/v1/status"):
        worst = max(renders[path + " render"], renders_pg[path + " render"])
        rows.append(f"| `{path}` | {renders[path + ' render']:.0f} ms | {renders_pg[path + ' render']:.0f} ms | "
                    f"{renders[path]:.0f} ms | {renders_pg[path]:.0f} ms | {renders[path + ' size'] // 1024} KiB | "
                    f"{'met' if worst < 200 else 'NOT met'} |")
    rows.append(f"\nThe first page after the collector starts reads every row: {renders['cold']:.0f} ms (SQLite), "
                f"{renders_pg['cold']:.0f} ms (PostgreSQL).")
    text = "\n".join(rows)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
