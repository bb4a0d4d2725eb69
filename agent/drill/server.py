"""A throwaway MariaDB/MySQL server for a drill: the installed `mariadbd`/`mysqld` on a new data
directory inside the drill's scratch directory, reachable through a Unix socket only
(`--skip-networking`), without grant tables (nothing but this process can reach the socket: its
directory is 0700), and with the event scheduler off (a loaded event must not act).

It never outlives the drill: `stop` ends it whatever happened (TERM, then KILL), it is started with
`PR_SET_PDEATHSIG` so that the kernel kills it when the drill dies (`kill -9`), and its argv carries the
scratch directory, by which the next drill finds and kills anything left (see scratch.py).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time
from typing import Iterable, List, Optional, Sequence

from agent.drill.scratch import SOCKET_DIR, SOCKET_PREFIX
from agent.execute import Finished, feed_command, run_hook

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
START_TIMEOUT = 300.0  # seconds for the data directory's initialisation, and again for the start
QUERY_TIMEOUT = 3600.0  # CHECK TABLE and COUNT(*) of a large table take a while
LOAD_TIMEOUT = 24 * 3600.0
_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes; a deep state_dir gets a short socket dir in /tmp
_SEARCH = ("/usr/sbin", "/usr/local/sbin", "/usr/libexec", "/usr/local/mysql/bin")


class ServerError(Exception):
    """The throwaway server could not be set up or asked (message: what failed, with the tool's output)."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _find(names: Sequence[str]) -> Optional[str]:
    for name in names:
        found = shutil.which(name) or next((os.path.join(d, name) for d in _SEARCH
                                            if os.access(os.path.join(d, name), os.X_OK)), None)
        if found:
            return found
    return None


class ThrowawayServer:
    """Use as a context manager around `start()`; `query` and `load` talk to it through the engine's
    client as the server's root. `directory` is an empty private directory of the drill's scratch dir."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.datadir = os.path.join(directory, "data")
        self.proc: Optional[subprocess.Popen] = None
        socket_dir = directory
        if len(os.path.join(directory, "mysqld.sock")) > _SOCKET_PATH_MAX:
            socket_dir = tempfile.mkdtemp(prefix=SOCKET_PREFIX)
            with open(os.path.join(os.path.dirname(directory), SOCKET_DIR), "w", encoding="utf-8") as handle:
                handle.write(socket_dir)
        self.socket = os.path.join(socket_dir, "mysqld.sock")
        self.daemon = _find(("mariadbd", "mysqld"))
        self.client = _find(("mariadb", "mysql"))
        if self.daemon is None or self.client is None:
            raise ServerError("no MariaDB/MySQL server to load the dump into: mariadbd or mysqld and its client "
                              "must be installed (apt-get install mariadb-server)")

    def start(self) -> None:
        """Initialise the data directory and start the server; raises ServerError naming what failed."""
        os.mkdir(self.datadir, 0o700)
        user = ["--user=root"] if os.geteuid() == 0 else []
        install = _find(("mariadb-install-db", "mysql_install_db"))
        if install is not None:
            argv = [install, "--no-defaults", f"--datadir={self.datadir}", "--skip-test-db",
                    "--auth-root-authentication-method=socket", *user]
        else:  # MySQL 5.7+: the server initialises its own data directory
            argv = [self.daemon, "--no-defaults", f"--datadir={self.datadir}", "--initialize-insecure", *user]
        done = run_hook(argv, START_TIMEOUT)
        if not done.ok:
            raise ServerError(f"initialising the throwaway server's data directory failed: {done.describe()}")
        log = os.path.join(self.directory, "error.log")
        with open(log, "wb") as handle:
            self.proc = subprocess.Popen(
                [self.daemon, "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
                 "--skip-networking", "--skip-grant-tables", "--event-scheduler=DISABLED", "--skip-log-bin",
                 f"--pid-file={os.path.join(self.directory, 'mysqld.pid')}", f"--log-error={log}",
                 "--max-allowed-packet=1G", "--innodb-buffer-pool-size=256M", "--innodb-log-file-size=256M",
                 "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0", *user],
                stdin=subprocess.DEVNULL, stdout=handle, stderr=handle, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f"the throwaway server exited with status {self.proc.returncode}: {_tail(log)}")
            if os.path.exists(self.socket) and run_hook(self._client_argv("SELECT 1"), 30).ok:
                return
            if time.monotonic() > deadline:
                raise ServerError(f"the throwaway server did not answer within {START_TIMEOUT:.0f} s: {_tail(log)}")
            time.sleep(0.1)

    def _client_argv(self, query: Optional[str] = None) -> List[str]:
        argv = [self.client, "--no-defaults", f"--socket={self.socket}", "--user=root", "--max-allowed-packet=1G"]
        if query is not None:
            argv += ["--batch", "--skip-column-names", "--default-character-set=utf8mb4", "-e", query]
        return argv

    def query(self, query: str) -> List[List[str]]:
        """The rows `query` returns, each a list of columns (as --batch prints them, unescaped).
        Raises ServerError with the client's message."""
        done = run_hook(self._client_argv(query), QUERY_TIMEOUT)
        if not done.ok:
            raise ServerError(done.describe())
        return [[_unescape(value) for value in line.split("\t")] for line in done.output.splitlines() if line]

    def load(self, chunks: Iterable[bytes]) -> Finished:
        """Feed a dump to the client; how the client ended (its message if it failed). An exception of
        `chunks` (a damaged object) kills the client and propagates."""
        return feed_command(self._client_argv(), chunks, LOAD_TIMEOUT)

    def stop(self) -> None:
        """End the server (TERM, up to 60 s, then KILL); a no-op if it never started or already ended."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> ThrowawayServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _unescape(value: str) -> str:
    """A value as the client prints it with --batch (tab, newline, NUL and backslash escaped)."""
    if "\\" not in value:
        return value
    out, chars = [], iter(value)
    for char in chars:
        if char == "\\":
            nxt = next(chars, "")
            out.append({"t": "\t", "n": "\n", "0": "\0"}.get(nxt, nxt))
        else:
            out.append(char)
    return "".join(out)


def _tail(log: str) -> str:
    try:
        with open(log, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - 1500, 0))
            return handle.read().decode("utf-8", "replace").strip()
    except OSError:
        return "(no error log)"
