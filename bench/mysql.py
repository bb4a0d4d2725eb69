"""MariaDB dump benchmark: backup-agent against `mariadb-dump | zstd > file` and
`mariadb-dump | restic backup --stdin`, on a generated database, for a first dump and a second one after
1% of the rows changed (appended and the newest updated: the analytics pattern).

    python bench/mysql.py [--rows 4000000] [--workdir DIR]

Starts its own throwaway mariadbd (as the tests do). Prints wall time, CPU, peak RSS and stored bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from fs import ENV, du, publish, timed  # noqa: E402

from tests.fixtures.mariadb import MariaDB, start_mariadb  # noqa: E402


def create_events(server: MariaDB, rows: int) -> None:
    """The `analytics.events` table with `rows` generated rows (about 250 bytes of dump each)."""
    server.sql("CREATE DATABASE analytics")
    server.sql("CREATE TABLE events (id INT PRIMARY KEY AUTO_INCREMENT, account INT, kind VARCHAR(20), "
               "payload VARBINARY(200), created DATETIME) ENGINE=InnoDB", "analytics")
    for start in range(0, rows, 500_000):
        count = min(500_000, rows - start)
        server.sql("INSERT INTO events (account, kind, payload, created) SELECT seq % 1000, "
                   "ELT(1 + seq % 3, 'login', 'launch', 'bill'), UNHEX(SHA2(seq, 512)), "
                   f"NOW() - INTERVAL seq SECOND FROM seq_{start + 1}_to_{start + count}", "analytics")


def agent_for(work: str, server: MariaDB) -> str:
    """Write an agent.toml in `work` with one `mysql` job, `db-analytics`, dumping `analytics` from
    `server`; returns the `backup-agent --config ...` command line to run it with."""
    config = os.path.join(work, "agent.toml")
    os.makedirs(os.path.join(work, "conf.d"))
    with open(config, "w") as handle:
        handle.write(f'host = "bench"\nrepository = "{work}/repo"\nstate_dir = "{work}/state"\n')
    with open(os.path.join(work, "conf.d", "db.toml"), "w") as handle:
        handle.write(f'[jobs.db-analytics]\ntype = "mysql"\ndatabase = "analytics"\nevery = "4h..6h"\n'
                     f'options_file = "{server.options_file}"\n')
    return f"{os.path.join(os.path.dirname(sys.executable), 'backup-agent')} --config {config}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4_000_000, help="about 250 bytes of dump per row")
    parser.add_argument("--workdir", default="/tmp/backup-agent-bench")
    args = parser.parse_args()
    work = os.path.join(args.workdir, "mysql")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    server = start_mariadb(os.path.join(work, "server"))
    try:
        create_events(server, args.rows)
        agent = agent_for(work, server)
        dump = (f"mariadb-dump --defaults-extra-file={server.options_file} --single-transaction --routines "
                "--triggers --events --hex-blob --quick --skip-dump-date --default-character-set=utf8mb4 "
                "--skip-add-locks --databases analytics")  # the agent's own options (agent/dumps/mysql.py)
        restic_repo = os.path.join(work, "restic")
        subprocess.run(["restic", "-r", restic_repo, "init", "-q"], check=True, capture_output=True, env=ENV)
        rows = []
        reports: list = []
        changed = args.rows // 200
        for label in ("first dump", "second dump (1% changed)", "third dump (0.1% scattered)"):
            if label.startswith("second"):
                # the analytics pattern: the newest 0.5% of the rows updated, 0.5% appended. By row order,
                # not by id: bulk inserts leave gaps in AUTO_INCREMENT ids.
                server.sql(f"UPDATE events SET kind = 'billed' ORDER BY id DESC LIMIT {changed}; "
                           "INSERT INTO events (account, kind, payload, created) SELECT seq % 1000, 'launch', "
                           f"UNHEX(SHA2(CONCAT('new', seq), 512)), NOW() FROM seq_1_to_{changed}", "analytics")
            if label.startswith("third"):
                # the hard case: one row in a thousand updated, spread over the whole table
                server.sql("UPDATE events SET kind = 'scattered' WHERE id % 1000 = 7", "analytics")
            before = {name: du(path) for name, path in (("agent", f"{work}/repo"), ("restic", restic_repo))
                      if os.path.exists(path)}
            report_file = os.path.join(work, f"report-{len(rows)}.json")
            ours = timed(f"{agent} backup db-analytics --json > {report_file}")
            with open(report_file) as handle:
                report = json.load(handle)[0]
            reports.append(report)
            zstd_file = os.path.join(work, f"dump-{len(rows)}.sql.zst")
            plain = timed(f"set -o pipefail; {dump} | zstd -q -3 -T0 > {zstd_file}")
            restic = timed(f"set -o pipefail; {dump} | restic -r {restic_repo} backup -q --stdin "
                           "--stdin-filename analytics.sql")
            stored_ours = du(f"{work}/repo") - before.get("agent", 0)
            stored_restic = du(restic_repo) - before.get("restic", 0)
            rows.append((label, ours, plain, restic, stored_ours, os.path.getsize(zstd_file), stored_restic))
            print(f"{label}: agent {ours.wall:.1f} s, pipeline {plain.wall:.1f} s, restic {restic.wall:.1f} s",
                  flush=True)
        lines = [f"MariaDB database of {args.rows} rows (+1% for the second dump); warm cache; 2 cores.", "",
                 "| | backup-agent | mariadb-dump \\| zstd | mariadb-dump \\| restic --stdin |", "|---|---|---|---|"]
        for label, ours, plain, restic, s_ours, s_plain, s_restic in rows:
            lines.append(f"| {label}: wall | {ours.wall:.1f} s ({ours.wall / plain.wall:.2f}x pipeline) | "
                         f"{plain.wall:.1f} s | {restic.wall:.1f} s |")
            lines.append(f"| {label}: user+sys CPU | {ours.user + ours.system:.1f} s | "
                         f"{plain.user + plain.system:.1f} s | {restic.user + restic.system:.1f} s |")
            lines.append(f"| {label}: peak RSS | {ours.rss_kib / 1024:.0f} MiB | {plain.rss_kib / 1024:.0f} MiB | "
                         f"{restic.rss_kib / 1024:.0f} MiB |")
            lines.append(f"| {label}: stored bytes | {s_ours / 2**20:.1f} MiB | {s_plain / 2**20:.1f} MiB | "
                         f"{s_restic / 2**20:.1f} MiB |")
        first, second = rows[0][4], rows[1][4]
        lines.append("")
        lines.append(f"Second dump stored {100 * second / max(first, 1):.1f}% of the first's bytes (target < 5%).")
        for (label, *_), report in zip(rows, reports):
            lines.append(f"- {label}: the report says {report['bytes']} bytes dumped, {report['new_bytes']} new "
                         f"({100 * report['new_bytes'] / max(report['bytes'], 1):.2f}%)")
        publish("\n".join(lines), "mysql.md")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
