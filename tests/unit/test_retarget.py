"""The dump rewrite that `restore --to-database` applies while loading (agent/dumps/retarget.py), on
text in the format mariadb-dump 10.11 writes (data/: a real dump, edited to hold the awkward cases; see
tests/e2e/test_mysql.py for the same on a live server)."""

from __future__ import annotations

import pathlib
import random

import pytest

from agent.dumps.retarget import Retarget, quote_name

DUMP = (pathlib.Path(__file__).parent / "data" / "mariadb-dump-10.11.sql").read_bytes()

def rewritten(source: str, target: str, pieces) -> tuple:
    retarget = Retarget(source, target)
    return b"".join(retarget.rewrite(pieces)), retarget


def test_a_copy_is_self_contained_and_inert():
    out, retarget = rewritten("ignored: the dump names its database", "copy-1", [DUMP])
    lines = out.split(b"\n")
    # the source's defaults, applied to the target before anything is created in it
    assert b"ALTER DATABASE `copy-1` DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;" in lines
    assert retarget.charset == "DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    assert not any(line.startswith((b"CREATE DATABASE", b"USE ", b"LOCK TABLES", b"UNLOCK TABLES")) for line in lines)
    # the sequence default and the view name the copy; another database's sequence stays
    assert b"  `id` bigint(20) NOT NULL DEFAULT nextval(`copy-1`.`invoice_seq`)," in lines
    assert b"  `other` bigint(20) NOT NULL DEFAULT nextval(`shared`.`global_seq`)," in lines
    assert b"/*!50001 VIEW `next_ids` AS select nextval(`copy-1`.`invoice_seq`) AS `n` */;" in lines
    # events are created disabled; only the one that was enabled is named for the operator
    events = [line for line in lines if line.startswith(b"/*!50106 CREATE*/")]
    assert len(events) == 3 and all(b"PRESERVE DISABLE DO " in line for line in events), events
    assert b"VALUES ('ENABLE')" in events[0]
    assert retarget.disabled_events == ["tick"]
    # rows, strings that look like statements, and everything else pass unchanged
    assert b"(1000,1,'USE `app`;\\nLOCK TABLES `x` WRITE;')," in lines
    assert b"(1001,2,'zweite \xf0\x9f\x98\x80');" in lines
    assert b"  `note` varchar(200) DEFAULT 'nextval(`app`.x);\\nUSE `app`;'," in lines
    assert out.startswith(b"/*M!999999") and out.endswith(b"-- Dump completed\n")
    removed = [line for line in DUMP.split(b"\n") if line.startswith((b"USE ", b"LOCK TABLES", b"UNLOCK TABLES"))]
    assert len(lines) == len(DUMP.split(b"\n")) - len(removed)


@pytest.mark.parametrize("seed", range(40))
def test_the_result_does_not_depend_on_where_the_stream_is_cut(seed):
    whole, _ = rewritten("app", "copy`1", [DUMP])
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(DUMP)), rng.randint(1, 80)))
    pieces = [DUMP[a:b] for a, b in zip([0, *cuts], [*cuts, len(DUMP)])]
    assert rewritten("app", "copy`1", pieces)[0] == whole
    assert rewritten("app", "copy`1", (DUMP[i:i + 1] for i in range(len(DUMP))))[0] == whole


def test_an_older_dump_without_create_database_uses_its_header_or_the_job_database():
    old = b"".join(line + b"\n" for line in DUMP.split(b"\n")[:-1]
                   if not line.startswith((b"CREATE DATABASE", b"USE ")))
    out, retarget = rewritten("job-db", "copy", [old])
    assert retarget.charset is None and b"ALTER DATABASE" not in out
    assert b"DEFAULT nextval(`copy`.`invoice_seq`)," in out  # the header said: Database: app
    headless = old.replace(b"-- Host: localhost    Database: app\n", b"")
    out, _ = rewritten("app", "copy", [headless])
    assert b"DEFAULT nextval(`copy`.`invoice_seq`)," in out
    out, _ = rewritten("other", "copy", [headless])
    assert b"DEFAULT nextval(`app`.`invoice_seq`)," in out


def test_names_are_quoted_for_any_name():
    assert quote_name("enstratus-console") == "`enstratus-console`"
    assert quote_name("it's `odd`") == "`it's ``odd```"
    out, _ = rewritten("app", "a`b", [DUMP])
    assert b"ALTER DATABASE `a``b` DEFAULT" in out


def test_mysql_8_create_database_line():
    line = (b"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `app` /*!40100 DEFAULT CHARACTER SET utf8mb4 "
            b"COLLATE utf8mb4_0900_ai_ci */ /*!80016 DEFAULT ENCRYPTION='N' */;\n")
    out, retarget = rewritten("x", "copy", [b"--\n" + line + b"USE `app`;\n"])
    assert out == b"--\nALTER DATABASE `copy` DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_0900_ai_ci;\n"
    assert retarget.source == "app"
    # a default collation is printed without COLLATE by older servers
    out, retarget = rewritten("x", "copy", [line.replace(b" COLLATE utf8mb4_0900_ai_ci", b"")])
    assert out == b"ALTER DATABASE `copy` DEFAULT CHARACTER SET utf8mb4;\n"
