"""Rewrites a mariadb-dump/mysqldump stream while it is loaded, so that the restored database is a
self-contained copy under the name the operator chose, whatever the dump's source database was called.

What `mariadb-dump` writes and why each needs a rewrite (formats as printed by MariaDB 10.3-11.x and
MySQL 5.7/8.0 `SHOW CREATE ...`, which the dump tool copies verbatim):

- `CREATE DATABASE ... `src` /*!40100 DEFAULT CHARACTER SET cs COLLATE co */;` and `USE `src`;`
  (dumps made with `--databases`): they would load into the source's name. The first becomes
  `ALTER DATABASE `target` DEFAULT CHARACTER SET cs COLLATE co;`, so that the target has the source's
  defaults before any table, routine, trigger, event or sequence is created in it (those take the
  database's character set when they declare none); the `USE` lines are dropped.
- `DEFAULT nextval(`src`.`seq`)` in a `CREATE TABLE`, and `nextval`/`lastval`/`setval` in a view:
  MariaDB binds a sequence named in a column default to the current database when the table is created
  and stores (and prints) it qualified, so a copy loaded under another name would draw ids from the
  source's sequence. The qualifier is changed to the target; a sequence of another database is left.
- `LOCK TABLES `t` WRITE;` ... `UNLOCK TABLES;` around each table's rows (older dumps; ours are made
  with `--skip-add-locks`): an INSERT into a table whose default draws from a sequence needs that sequence
  locked too, so the load fails with ERROR 1100. The locks only speed up MyISAM loads: dropped.
- `CREATE EVENT ... ENABLE`: an event starts firing as soon as it is created, and its body may name the
  source database explicitly. Every event is created `DISABLE`; `disabled_events` names those that were
  enabled in the dump, for the operator to enable (`ALTER EVENT name ENABLE`) once the copy is meant to
  act.

Only whole lines that begin as the dump tool writes these statements are touched (found with one
regular expression whose literal first byte, a newline, keeps the scan at C speed over the rows: about
600 MB/s on the benchmark machine, far above the rate at which a server loads a dump).
Row data cannot be mistaken for them: the tool escapes newlines inside strings, so every line of a
table's rows starts with `INSERT` or `(`.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator, List, Optional

_CANDIDATE = re.compile(rb"\n(?:-- Host: |CREATE DATABASE |USE `|LOCK TABLES `|UNLOCK TABLES;|CREATE TABLE `"
                        rb"|/\*!50106 CREATE\*/|/\*!50001 VIEW `)")
_LOOKBACK = 24  # longer than any candidate's prefix: one that straddles two chunks is found next time
_NAME = rb"`(?:[^`]|``)+`"
_CREATE_DATABASE = re.compile(rb"CREATE DATABASE /\*!32312 IF NOT EXISTS\*/ (" + _NAME + rb")"
                              rb"(?: /\*!40100 (DEFAULT CHARACTER SET \w+(?: COLLATE \w+)?) \*/)?[^\n]*;\n")
_HOST = re.compile(rb"-- Host: [^\n]*?    Database: ([^\n]+)\n")  # the header names the source
_USE = re.compile(rb"USE " + _NAME + rb";\n")
_LOCK = re.compile(rb"LOCK TABLES " + _NAME + rb" WRITE;\n")
_EVENT = re.compile(rb"(/\*!50106 CREATE\*/ (?:/\*!50117 DEFINER=[^\n]*?\*/ )?/\*!50106 EVENT (" + _NAME + rb")"
                    rb" ON SCHEDULE [^\n]*? ON COMPLETION (?:NOT )?PRESERVE )"
                    rb"(ENABLE|DISABLE ON SLAVE|DISABLE ON REPLICA|DISABLE)\b")


def quote_name(name: str) -> str:
    """An identifier quoted for MariaDB/MySQL: any name the server accepts, backticks doubled."""
    return "`" + name.replace("`", "``") + "`"


def _unquote(quoted: bytes) -> str:
    return quoted[1:-1].replace(b"``", b"`").decode("utf-8", "replace")


class Retarget:
    """One load of a dump into database `target`; `source` is the database the dump was taken from
    (the dump's header and `CREATE DATABASE` line override it). After `rewrite` has been consumed:
    `charset` is the source's `DEFAULT CHARACTER SET ... [COLLATE ...]` if the dump records it (None:
    a dump made without `--databases`), `disabled_events` the events that the dump had enabled."""

    def __init__(self, source: str, target: str) -> None:
        self.target = target
        self._set_source(source)
        self.charset: Optional[str] = None
        self.disabled_events: List[str] = []

    def _set_source(self, source: str) -> None:
        self.source = source
        quoted = re.escape(quote_name(source).encode())
        # string literals and quoted names are matched (and kept) whole, so that nothing inside them is
        # mistaken for a call
        self._qualified = re.compile(rb"('(?:[^'\\]|\\.|'')*'|" + _NAME + rb")|\b(nextval|lastval|setval)\("
                                     + quoted + rb"\.", re.IGNORECASE | re.DOTALL)

    def rewrite(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """The dump's bytes with the statements above rewritten; memory: one chunk plus the longest
        statement being rewritten."""
        buffer = bytearray(b"\n")  # a line start before the first line; never emitted
        done = 1                   # buffer[:done] is emitted (or the leading newline)
        for chunk in chunks:
            buffer += chunk
            done = yield from self._advance(buffer, done, final=False)
        yield from self._advance(buffer, done, final=True)

    def _advance(self, buffer: bytearray, done: int, final: bool) -> Iterator[bytes]:
        """Emits what is settled, trims `buffer`, and returns the new `done` (a generator's return)."""
        scan = max(done - 1, 0)
        while True:
            found = _CANDIDATE.search(buffer, scan)
            if found is None:
                keep = len(buffer) if final else max(done, len(buffer) - _LOOKBACK)
                if keep > done:
                    yield bytes(buffer[done:keep])
                cut = max(keep - 1, 0)  # keep the byte before what is left: a newline starts a candidate
                del buffer[:cut]
                return keep - cut
            start = found.start() + 1
            terminator = b";\n" if buffer.startswith(b"CREATE TABLE", start) else b"\n"
            end = buffer.find(terminator, start)
            if end < 0 and not final:  # the rest of the statement is in a later chunk
                if start > done:
                    yield bytes(buffer[done:start])
                del buffer[:start - 1]
                return 1
            end = len(buffer) if end < 0 else end + len(terminator)
            if start > done:
                yield bytes(buffer[done:start])
            yield self._statement(bytes(buffer[start:end]))
            done = end
            scan = end - 1

    def _statement(self, text: bytes) -> bytes:
        if text.startswith(b"CREATE TABLE") or text.startswith(b"/*!50001 VIEW"):
            target = quote_name(self.target).encode()
            return self._qualified.sub(lambda m: m.group(1) or m.group(2) + b"(" + target + b".", text)
        if text.startswith(b"CREATE DATABASE"):
            created = _CREATE_DATABASE.fullmatch(text)
            if created is None:
                return text
            self._set_source(_unquote(created.group(1)))
            if created.group(2) is None:
                return b""
            self.charset = created.group(2).decode()
            return f"ALTER DATABASE {quote_name(self.target)} {self.charset};\n".encode()
        header = _HOST.fullmatch(text)
        if header is not None:
            self._set_source(header.group(1).decode("utf-8", "replace"))
            return text
        if _USE.fullmatch(text) or _LOCK.fullmatch(text) or text == b"UNLOCK TABLES;\n":
            return b""
        event = _EVENT.match(text)
        if event is None:
            return text
        if event.group(3) == b"ENABLE":
            self.disabled_events.append(_unquote(event.group(2)))
        return event.group(1) + b"DISABLE" + text[event.end():]
