"""agent/execute.py with real child processes: exit status, signals, timeouts and stop requests, whole
process groups killed, output kept bounded and masked, stdin fed and refused, no secret in any argv."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time

import pytest

from agent.config import Interval, Job
from agent.dumps import mysql
from agent.execute import _KEEP, StreamingCommand, feed_command, mask, run_hook
from tests.helpers import process_state

SECRET = "Xq7-unit-S3cret"
PY = sys.executable


def wait_gone(pid: int) -> None:
    """Until `pid` has exited (a zombie waiting for init counts): proves a kill reached it."""
    deadline = time.monotonic() + 10
    while process_state(pid) not in ("", "Z"):
        assert time.monotonic() < deadline, f"process {pid} is still running"
        time.sleep(0.01)


def grandchild_script(pidfile: str, before: str = "") -> list:
    """sh starting a long sleep of its own (same process group) and waiting for it."""
    return ["sh", "-c", f"{before}sleep 300 & echo $! > {pidfile}; wait"]


def read_pid(pidfile: str) -> int:
    deadline = time.monotonic() + 10
    while True:
        try:
            with open(pidfile) as handle:
                text = handle.read().strip()
        except FileNotFoundError:
            text = ""
        if text.isdigit():  # echo writes the line in one write
            return int(text)
        assert time.monotonic() < deadline, "the child never wrote its pid"
        time.sleep(0.01)


def test_hook_output_and_exit_status():
    done = run_hook(["sh", "-c", "echo out; echo err >&2; exit 3"], 30)
    assert done.returncode == 3 and not done.ok and not done.timed_out
    assert "out" in done.output and "err" in done.output
    assert done.describe() == "sh exited with status 3: out\nerr"
    assert run_hook(["true"], 30).ok


def test_output_that_is_not_utf8_is_kept_escaped_as_names_are():
    """A tool's message holding byte 0xff reads `\\xff` in the report (as a file name would), not U+FFFD."""
    done = run_hook(["sh", "-c", "printf 'cannot open dump\\377.sql\\n' >&2; exit 1"], 30)
    assert done.output.strip() == "cannot open dump\\xff.sql"


def test_hook_killed_by_a_signal_is_named():
    done = run_hook(["sh", "-c", "kill -KILL $$"], 30)
    assert done.returncode == -9 and "killed by signal SIGKILL" in done.describe()


def test_a_program_that_cannot_start():
    done = run_hook(["/nonexistent/tool", "x"], 30)
    assert done.returncode == 127 and not done.ok and "cannot start" in done.output
    with pytest.raises(OSError):
        StreamingCommand(["/nonexistent/tool"], 30)


def test_hook_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = str(tmp_path / "pid")
    done = run_hook(grandchild_script(pidfile), 0.5)
    assert done.timed_out and done.returncode is None and not done.ok
    assert "timed out and was killed" in done.describe()
    wait_gone(read_pid(pidfile))  # the tool's own child went with it


def test_hook_stop_request_kills_it(tmp_path):
    pidfile = str(tmp_path / "pid")
    stop = threading.Event()
    result = []
    thread = threading.Thread(target=lambda: result.append(run_hook(grandchild_script(pidfile), 300, stop=stop)))
    thread.start()
    grandchild = read_pid(pidfile)
    stop.set()
    thread.join(30)
    assert not thread.is_alive() and result[0].returncode is None and not result[0].ok
    assert result[0].stopped and not result[0].timed_out
    assert "the agent is stopping" in result[0].describe()
    wait_gone(grandchild)


def test_output_is_masked_and_bounded():
    script = f"import sys\nfor i in range(100000): print('line', i, '{SECRET}')\nsys.exit(1)"
    done = run_hook([PY, "-c", script], 60, secrets=[SECRET])
    assert SECRET not in done.output and SECRET not in done.describe()
    assert done.output.endswith("line 99999 ***\n") and len(done.output) <= _KEEP
    assert mask(f"a {SECRET} b {SECRET}", [SECRET, ""]) == "a *** b ***"
    assert mask("ab abc", ["ab"]) == "ab abc"  # a two-letter "secret" would mask half of every message


def test_streaming_command_stdout_is_read_while_it_runs_and_stderr_kept_masked():
    script = (f"import sys\nsys.stderr.write('warning: {SECRET}\\n')\n"
              "for i in range(2000): sys.stdout.write('%06d\\n' % i)\n")
    with StreamingCommand([PY, "-c", script], 30, secrets=[SECRET]) as command:
        data = command.stdout.read()
        finished = command.finish()
    assert data == b"".join(b"%06d\n" % i for i in range(2000))
    assert finished.ok and finished.output == "warning: ***\n"


def test_streaming_command_timeout_kills_the_group_and_ends_the_stream(tmp_path):
    pidfile = str(tmp_path / "pid")
    # the grandchild holds stdout open: the stream ends only if the whole group is killed
    with StreamingCommand(grandchild_script(pidfile, before="echo started; "), 0.5) as command:
        data = command.stdout.read()
        finished = command.finish()
    assert data == b"started\n" and finished.timed_out and not finished.ok
    wait_gone(read_pid(pidfile))


def test_streaming_command_stop_request(tmp_path):
    stop = threading.Event()
    with StreamingCommand(["sleep", "300"], 300, stop=stop) as command:
        stop.set()
        assert command.stdout.read() == b""
        finished = command.finish()
    assert not finished.ok and finished.returncode is None and finished.stopped


def test_an_error_while_streaming_kills_the_command(tmp_path):
    pidfile = str(tmp_path / "pid")
    with pytest.raises(RuntimeError), StreamingCommand(grandchild_script(pidfile), 300) as command:
        grandchild = read_pid(pidfile)
        raise RuntimeError("disk full")
    assert command.proc.returncode == -9
    wait_gone(grandchild)


def test_feed_command_writes_every_chunk_to_stdin():
    chunks = [os.urandom(65536) for _ in range(64)]
    script = "import sys, hashlib; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"
    done = feed_command([PY, "-c", script], iter(chunks), timeout=60)
    assert done.ok and done.output.strip() == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_feed_command_client_that_stops_reading_is_a_failure():
    chunks = (b"x" * 65536 for _ in range(256))  # far more than a pipe holds
    gave_up = feed_command([PY, "-c", "import sys; sys.stdin.buffer.read(10); print('enough')"], chunks, 60)
    assert gave_up.returncode == 1 and not gave_up.ok and "enough" in gave_up.output
    refused = feed_command([PY, "-c", "import sys; sys.stderr.write('ERROR 1100\\n'); sys.exit(4)"], chunks, 60)
    assert refused.returncode == 4 and "ERROR 1100" in refused.describe()


def test_feed_command_timeout(tmp_path):
    pidfile = str(tmp_path / "pid")
    done = feed_command(grandchild_script(pidfile), iter([b"select 1;\n"]), timeout=0.5)
    assert done.timed_out and not done.ok
    wait_gone(read_pid(pidfile))


def test_feed_command_timeout_while_a_write_is_blocked(tmp_path):
    # the client never reads: the pipe fills and the write blocks until the deadline kills the client
    pidfile = str(tmp_path / "pid")
    chunks = (b"x" * 65536 for _ in range(1024))
    done = feed_command(grandchild_script(pidfile), chunks, timeout=0.5)
    assert done.timed_out and done.returncode is None and "timed out" in done.describe()
    wait_gone(read_pid(pidfile))


def test_a_failing_chunk_source_kills_the_client_before_it_acts_on_a_cut_input(tmp_path):
    pidfile = str(tmp_path / "pid")
    marker = tmp_path / "acted"
    # the client would act once its input ends: it must be killed instead
    script = f"sleep 300 & echo $! > {pidfile}; cat > /dev/null; touch {marker}"

    def chunks():
        yield b"CREATE TABLE t (id INT);\n"
        read_pid(pidfile)
        raise OSError("pack 3f2a... is damaged")

    with pytest.raises(OSError, match="damaged"):
        feed_command(["sh", "-c", script], chunks(), timeout=60)
    wait_gone(read_pid(pidfile))
    assert not marker.exists()


def test_no_secret_in_the_argv_of_a_dump_or_a_load(tmp_path):
    options = tmp_path / "client.cnf"
    options.write_text(f"[client]\nuser=backup\npassword='{SECRET}'\n[mysqldump]\npass={SECRET}2\n")
    job = Job(name="db", type="mysql", every=Interval(3600, 3600, "1h"), source="jobs.toml", database="app",
              options_file=str(options), dump_command="/usr/bin/mariadb-dump")
    argvs = [mysql.dump_argv(job), mysql.client_argv(job, None, database="app"),
             mysql.client_argv(job, None, query="SELECT 1")]
    for argv in argvs:
        assert argv[1] == f"--defaults-extra-file={options}"  # the only way the password travels
        assert not any(SECRET in arg for arg in argv), argv
    assert sorted(mysql.secrets(job)) == sorted([SECRET, f"{SECRET}2"])
