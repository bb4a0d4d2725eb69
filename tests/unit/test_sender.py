"""The sender against the real collector app (Starlette, SQLite) on 127.0.0.1:0, with a real spool."""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import Iterator, Tuple

import httpx
import pytest

from agent.collector.app import create_app
from agent.collector.storage import open_storage
from agent.collector.tokens import TokenStore, create_token
from agent.config import CollectorSettings
from agent.config.token import TokenFileError, read_token
from agent.report import Changes
from agent.report.sender import DeliveryLoop, Sender, describe_error
from agent.report.spool import Spool
from tests.unit.test_freshness import serving
from tests.unit.test_report_schema import make


@pytest.fixture
def collector(tmp_path) -> Iterator[Tuple[str, str, httpx.Client]]:
    """(url, token of node-1, a client of the collector)."""
    tokens = str(tmp_path / "tokens.toml")
    token = create_token(tokens, "node-1")
    storage = open_storage(f"sqlite:///{tmp_path}/collector.db")
    with serving(create_app(storage, TokenStore(tokens))) as client:
        yield str(client.base_url).rstrip("/"), token, client
    storage.close()


def sender_for(tmp_path, url: str, token_text: str, **kwargs) -> Sender:
    token_file = tmp_path / "collector.token"
    token_file.write_text(token_text)
    token_file.chmod(0o600)
    settings = CollectorSettings(url=url, token_file=str(token_file), max_backoff=1.0)
    return Sender(Spool(str(tmp_path / "state")), settings, **kwargs)


def test_a_report_with_a_name_that_is_not_utf8_is_delivered_not_dead_lettered(tmp_path, collector, caplog):
    url, token, client = collector
    sender = sender_for(tmp_path, url, f"\n  {token}  \n")  # whitespace around the token is fine
    fifo = os.fsdecode(b"pipe\xff")
    sender.spool.add(make(status="failed", warnings=(f"{fifo}: FIFO skipped",), errors=(f"cannot read {fifo}",),
                          trigger="change", changes=Changes(1, 0, 0, (f"webapps/{fifo}",))))
    with caplog.at_level(logging.DEBUG):
        result = sender.drain()
    sender.close()
    assert (result.delivered, result.dead, result.remaining, result.blocked) == (1, 0, 0, None)
    [stored] = client.get("/api/v1/reports").json()
    assert stored["warnings"] == ["pipe\\xff: FIFO skipped"] and stored["changes"]["paths"] == ["webapps/pipe\\xff"]
    assert not [r for r in caplog.records if r.name == "httpx" and r.levelno < logging.WARNING]
    row = client.get("/api/v1/status").json()["jobs"][0]
    assert row["state"] == "failing"  # the failed run shows in the fleet view


def test_a_rejected_report_is_dead_lettered_with_the_collectors_reason(tmp_path, collector):
    url, token, _ = collector
    sender = sender_for(tmp_path, url, token)
    sender.spool.add(make(seq=0))
    entry = sender.spool.pending()[0]
    body = json.loads(sender.spool.read(entry))
    body["status"] = "fine"
    with open(os.path.join(sender.spool.pending_dir, entry.name), "w") as handle:
        json.dump(body, handle)
    result = sender.drain()
    sender.close()
    assert (result.delivered, result.dead, result.remaining) == (0, 1, 0)
    [(_, reason)] = sender.spool.dead()
    assert reason.startswith("HTTP 422") and "status: must be one of ok, failed" in reason


@pytest.mark.parametrize("content", ["{token}\nwrote token for node-1\n", "Bearer {token}", "{token} {token}",
                                     "\ufeff{token}", ""])
def test_a_malformed_token_file_is_a_configuration_error_that_never_shows_its_contents(tmp_path, collector,
                                                                                       caplog, content):
    url, token, client = collector
    sender = sender_for(tmp_path, url, content.format(token=token))
    sender.spool.add(make())
    with caplog.at_level(logging.DEBUG):
        result = sender.drain()
        DeliveryLoop(lambda stop: sender).step()  # the daemon logs it; a command prints its own error line
    sender.close()
    assert result.remaining == 1 and result.delivered == 0
    assert result.blocked is not None and result.blocked.startswith("configuration error: collector.token_file ")
    assert result.config_error
    assert str(tmp_path / "collector.token") in result.blocked
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "collector.token_file" in logged
    for text in (token, "wrote token", "Bearer"):
        assert text not in logged and text not in result.blocked
    assert client.get("/api/v1/reports").json() == []
    with pytest.raises(TokenFileError):
        read_token(str(tmp_path / "collector.token"))


def test_an_unreachable_collector_keeps_the_report_and_a_one_shot_sender_does_not_wait(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    sender = sender_for(tmp_path, f"http://127.0.0.1:{port}", "bat_abc", patient=False)
    sender.spool.add(make())
    result = sender.drain()
    sender.close()
    assert (result.delivered, result.remaining, result.blocked) == (0, 1, None)


def test_transport_errors_that_could_quote_a_header_are_named_only():
    secret = "bat_s3cret"
    leaky = httpx.LocalProtocolError(f"Illegal header value b'Bearer {secret}\\nx'")
    assert describe_error(leaky, secret) == "LocalProtocolError"
    refused = httpx.ConnectError(f"[Errno 111] Connection refused {secret}")
    assert describe_error(refused, secret) == "ConnectError: [Errno 111] Connection refused ***"
