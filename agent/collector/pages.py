"""The collector's HTML, rendered on the server: the page holds every host and state, so it reads
without scripts (it refreshes itself with a meta tag) and stays light with 1,000 hosts x 12 jobs."""

from __future__ import annotations

from html import escape
from typing import List, Optional, Sequence, Tuple
from urllib.parse import quote

from agent.collector.charts import STYLE as CHART_STYLE
from agent.collector.charts import history_charts, size_text
from agent.collector.freshness import STATES, Cell, HostView, age, iso
from agent.collector.storage import Run
from agent.text import plural

REFRESH_SECONDS = 60

STYLE = """
body{font:14px system-ui,sans-serif;margin:1em 2em;color:#222}
h1{font-size:1.3em;margin:.2em 0}h2{font-size:1.05em;margin:1em 0 .2em}
.summary span{display:inline-block;margin-right:1.2em}
.wide{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin-top:.8em}
th,td{border:1px solid #ddd;padding:2px 6px;text-align:left;white-space:nowrap}
th{background:#f4f4f4;position:sticky;top:0;white-space:normal;overflow-wrap:anywhere;vertical-align:bottom}
#fleet th{min-width:4em;max-width:8em}#fleet td{white-space:normal;min-width:5em}
td a{color:inherit;text-decoration:none;display:block}
.ok{background:#d9f2d9}.overdue{background:#ffe8a8}.failing{background:#f8b4b4}.never{background:#eee;color:#777}
.silent{background:#d6c8f0}
.drill{display:block;font-size:.8em;color:#555}.drill-overdue{color:#8a5a00;font-weight:bold}
.drill-failing{color:#b00;font-weight:bold}
td.err{white-space:normal;max-width:50em;color:#900}
td.changes{white-space:normal;max-width:40em;font-size:.9em}
.muted{color:#777}
"""


def _page(title: str, body: str, refresh: bool = True) -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if refresh else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}<title>{escape(title)}</title>'
            f"<style>{STYLE}{CHART_STYLE}</style></head><body>{body}</body></html>")


def _row(view: HostView, columns: Sequence[Tuple[str, str]], now: float) -> str:
    """One host's row. Written for speed: 1,000 hosts x 12 jobs is 12,000 cells per page, so a healthy
    cell carries only its state and age; a failing or overdue one also the last run and error (title)."""
    host = escape(view.host)
    link = f"/hosts/{quote(view.host, safe='')}/jobs/"
    cells = []
    for cell, (job, job_link) in zip(view.cells, columns):
        row = cell.row
        state = cell.state
        if row is None:  # the collector cannot tell a job this host lacks from one not reported yet
            cells.append(f'<td class="none" data-job="{job}" data-state="never"></td>')
            continue
        last_ok = age(now - row.last_ok_ts) if row.last_ok_ts is not None else None
        drill = "" if cell.drill is None else _drill(cell, now)
        if state == "ok":
            cells.append(f'<td class="ok" data-job="{job}" data-state="ok" data-drill-state="{cell.drill_state}">'
                         f'<a href="{link}{job_link}">{last_ok}{drill}</a></td>')
            continue
        # not ok: say so first, then how old the last good backup is (an age alone reads like good news)
        text = f"{'overdue' if state == 'overdue' else 'failed'}; " + (
            f"last ok {last_ok}" if last_ok is not None else "no success yet")
        tip = f"{state}; last run {iso(row.last_run_ts)} {row.last_status} ({row.last_trigger})"
        if row.last_error:
            tip = escape(f"{tip}\nlast error: {row.last_error}")
        cells.append(f'<td class="{state}" data-job="{job}" data-state="{state}" data-drill-state="{cell.drill_state}"'
                     f' title="{tip}"><a href="{link}{job_link}">{text}{drill}</a></td>')
    silent = view.state == "silent"
    marks = (" (silent)" if silent else "") + ("" if view.last_seen else " (no report yet)")
    seen = f"last report {age(now - view.last_seen)}" if view.last_seen else "no report yet"
    return (f'<tr data-host="{host}" data-host-state="{view.state}"><td class="{"silent" if silent else ""}" '
            f'title="{seen}">{host}{marks}{_pruned(view, now)}</td>{"".join(cells)}'
            f'<td>{view.missing or ""}</td></tr>')


def _pruned(view: HostView, now: float) -> str:
    """The host's repository size and when it was last pruned (nothing before its first prune report)."""
    prune = view.prune
    if prune is None:
        return ""
    size = f"repository {size_text(prune.repository_bytes)}, " if prune.repository_bytes is not None else ""
    failed = " (failed)" if prune.last_status != "ok" else ""
    return f'<span class="drill prune">{size}pruned {age(now - prune.last_prune_ts)}{failed}</span>'


def _drill(cell: Cell, now: float) -> str:
    """The line a cell shows about restore drills: when the job was last proven restorable, flagged
    when that is overdue or the last drill failed (its error on hover)."""
    drill = cell.drill
    assert drill is not None
    proven = f"proven restorable {age(now - drill.last_ok_ts)}" if drill.last_ok_ts is not None else "never proven"
    if cell.drill_state == "failing":
        tip = escape(f"last drill {iso(drill.last_drill_ts)} failed: {drill.last_error or ''}")
        return f'<span class="drill drill-failing" title="{tip}">drill failed; {proven}</span>'
    if cell.drill_state == "overdue":
        return f'<span class="drill drill-overdue">drill overdue; {proven}</span>'
    return f'<span class="drill">{proven}</span>'


def dashboard(now: float, jobs: Sequence[str], views: Sequence[HostView], only: Optional[str] = None) -> str:
    counts = {state: 0 for state in STATES}
    for view in views:
        for cell in view.cells:
            counts[cell.state] += 1
    silent = sum(1 for view in views if view.state == "silent")
    unheard = sum(1 for view in views if not view.last_seen)
    shown = [view for view in views if only is None or view.state == only
             or any(cell.state == only for cell in view.cells)]
    shown.sort(key=lambda view: (view.worst, view.host))  # problems first
    # cells without a report are not counted: most are jobs a host does not have
    summary = "".join(f'<span class="{state}">{plural(counts[state], state + " job", state + " jobs")}</span>'
                      for state in STATES if state != "never")
    summary += f'<span class="silent">{plural(silent, "silent host")}</span>'
    if unheard:
        summary += f'<span class="never">{plural(unheard, "host")} with no report yet</span>'
    filters = " ".join(f'<a href="/?state={state}">{state}</a>' for state in (*STATES, "silent"))
    head = "<tr><th>host</th>" + "".join(f"<th>{escape(job)}</th>" for job in jobs) + "<th>lost reports</th></tr>"
    columns = [(escape(job), quote(job, safe="")) for job in jobs]
    lines = [_row(view, columns, now) for view in shown]
    body = (f"<h1>Backups: {plural(len(views), 'host')}, {plural(len(jobs), 'job')}</h1>"
            f'<p class="summary">{summary}</p>'
            f'<p class="muted">As of {iso(now)}. Cells: age of the last good backup '
            f'(blank: no report of that job from that host); hover for the last error, '
            f'click for the history. Show only: {filters} <a href="/">all</a></p>'
            f'<div class="wide"><table id="fleet"><thead>{head}</thead><tbody>{"".join(lines)}</tbody></table></div>')
    return _page("Backups", body)


def _changes(changes: Optional[dict]) -> str:
    """What a change-triggered run changed: the counts, then its first paths one per line."""
    if not changes:
        return ""
    counts = f'+{changes["added"]} -{changes["removed"]} ~{changes["changed"]}'
    paths = "".join(f"<br><code>{escape(path)}</code>" for path in changes["paths"][:20])
    return f'<span class="counts" title="added, removed, changed">{counts}</span>{paths}'


def history(now: float, host: str, job: str, rows: List[dict], gaps: List[Tuple[int, int]],
            runs: Sequence[Run] = ()) -> str:
    """A job's page: the last 90 days drawn (agent.collector.charts), then the newest runs as a table.
    `rows`: report bodies, newest first; `runs`: the runs of the window, for the charts."""
    from agent.collector.schema import parse_time

    lines = []
    for row in rows:
        started, finished = parse_time(row["started_at"]), parse_time(row["finished_at"])
        errors = "<br>".join(escape(error) for error in row.get("errors", [])[:20])
        lines.append(f'<tr data-status="{escape(row["status"])}"><td>{escape(row["finished_at"][:19])}</td>'
                     f'<td class="{"ok" if row["status"] == "ok" else "failing"}">{escape(row["status"])}</td>'
                     f'<td>{escape(row["trigger"])}</td><td>{finished - started:.1f} s</td>'
                     f'<td>{row["files"]}</td><td>{size_text(row["bytes"])}</td><td>{size_text(row["new_bytes"])}</td>'
                     f'<td>{row["seq"]}</td><td class="changes">{_changes(row.get("changes"))}</td>'
                     f'<td class="err">{errors}</td></tr>')
    gap_text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in gaps)
    body = (f'<p><a href="/">&larr; fleet</a></p><h1>{escape(host)} / {escape(job)}</h1>'
            f'<p class="muted">{plural(len(rows), "newest run")}. '
            + (f"Reports lost from this host (sequence numbers): {escape(gap_text)}." if gaps else "No lost reports.")
            + "</p>" + history_charts(now, runs)
            + "<h2>Newest runs</h2><table><thead><tr><th>finished (UTC)</th><th>status</th><th>trigger</th>"
              "<th>duration</th><th>files</th><th>size</th><th>new</th><th>seq</th><th>changes</th><th>errors</th>"
              "</tr></thead>"
            + f"<tbody>{''.join(lines)}</tbody></table>")
    return _page(f"{host} / {job}", body)


def not_found(host: str, job: str) -> str:
    return _page("not found", f'<p><a href="/">&larr; fleet</a></p><p>No report of {escape(job)} '
                              f"on {escape(host)}.</p>", refresh=False)
