"""The node's collector token file (`collector.token_file`), read strictly.

The file holds one bearer token (RFC 6750 `b64token`: letters, digits, `-._~+/`, then `=` padding), with
any whitespace around it: what `backup-agent collector token` prints as its last line, redirected or pasted.
Anything else (a second line, a message captured with `2>&1`, a BOM) is a configuration error that names
the file and never repeats its contents: a token must not reach a log line, nor an HTTP header it would
make illegal (the HTTP library's error then quotes the whole header).
"""

from __future__ import annotations

import re

TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")  # RFC 6750 section 2.1, b64token
MAX_TOKEN = 1024


class TokenFileError(Exception):
    """A configuration error: the token file is unreadable or does not hold exactly one token. The message
    names the file and says what is wrong, without any of its contents."""


def read_token(path: str) -> str:
    """The token in `path`; raises TokenFileError."""
    where = f"collector.token_file {path}"
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_TOKEN + 4096)
    except OSError as exc:
        raise TokenFileError(f"{where}: cannot read it: {exc.strerror}") from None
    try:
        token = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise TokenFileError(f"{where}: holds bytes that cannot be in a token (only the token, as "
                             f"`backup-agent collector token` prints it on its last line)") from None
    if not token:
        raise TokenFileError(f"{where}: is empty")
    if len(token) > MAX_TOKEN or TOKEN.fullmatch(token) is None:
        raise TokenFileError(f"{where}: must hold one token and nothing else (letters, digits and -._~+/; "
                             f"whitespace around it is allowed), as `backup-agent collector token` prints it "
                             f"on its last line")
    return token

