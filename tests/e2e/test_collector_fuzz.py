"""Property-based fuzzing of the live collector's API: whatever a client sends, never a 5xx."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.test_collector import report
from tests.fixtures.collector import make_token

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=30)
FIELDS = list(report("node-a").keys())


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from tests.fixtures.collector import Collector

    base = tmp_path_factory.mktemp("fuzz")
    collector = Collector(str(base), str(base / "tokens.toml"), f"sqlite:///{base}/c.db").start()
    token = make_token(collector.tokens_file, "node-a")
    client = httpx.Client(base_url=collector.url, timeout=30)
    yield collector, token, client
    client.close()
    collector.stop()


COMMON = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@COMMON
@given(field=st.sampled_from(FIELDS), value=json_values)
def test_any_field_value_is_answered_without_a_server_error(live, field, value):
    _, token, client = live
    body = report("node-a")
    body[field] = value
    response = client.post("/api/v1/reports", content=json.dumps(body, allow_nan=True),
                           headers={"Authorization": f"Bearer {token}"})
    assert response.status_code < 500, response.text
    if field == "host" and value != "node-a":
        assert response.status_code == 403


@COMMON
@given(body=json_values)
def test_any_json_body_is_answered_without_a_server_error(live, body):
    _, token, client = live
    response = client.post("/api/v1/reports", content=json.dumps(body, allow_nan=True),
                           headers={"Authorization": f"Bearer {token}"})
    assert response.status_code in (400, 403, 422), response.text


@COMMON
@given(raw=st.binary(max_size=300), auth=st.text(max_size=60),
       query=st.dictionaries(st.sampled_from(["host", "job", "limit", "state"]), st.text(max_size=20), max_size=3))
def test_any_bytes_headers_and_queries_are_answered_without_a_server_error(live, raw, auth, query):
    _, _, client = live
    try:
        response = client.post("/api/v1/reports", content=raw, headers={"Authorization": auth})
    except (httpx.LocalProtocolError, UnicodeEncodeError):
        return  # a header value the HTTP client itself refuses to send
    invalid_header = any(ord(char) < 32 or ord(char) == 127 for char in auth)
    # no token: 401; a control character in a header is refused by the HTTP parser itself: 400
    assert response.status_code == 401 or (response.status_code == 400 and invalid_header), response.text
    for path in ("/", "/api/v1/status", "/api/v1/reports", "/metrics"):
        assert client.get(path, params=query).status_code < 500
