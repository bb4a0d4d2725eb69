"""agent.text: exceptions said in words, never by their Python class name."""

from __future__ import annotations

import errno
import json

import pytest

from agent.text import in_words


def _decode_error() -> json.JSONDecodeError:
    with pytest.raises(json.JSONDecodeError) as caught:
        json.loads('{"id": "x')
    return caught.value


@pytest.mark.parametrize("exc, expected", [
    (_decode_error(), "not valid JSON (unterminated string starting at line 1 column 8)"),
    (KeyError("id"), "the field 'id' is missing"),
    (OSError(errno.ENOSPC, "No space left on device", "/var/lib/x"), "/var/lib/x: No space left on device"),
    (ValueError("bad chunker"), "bad chunker"),
    (RuntimeError(), "unexpected RuntimeError"),
])
def test_in_words(exc, expected):
    assert in_words(exc) == expected
