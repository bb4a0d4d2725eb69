#!/usr/bin/env python3
"""Prints the commands of the README's first screen, one per line, exactly as written there, so that CI
runs what a new user copies (`.ci/run`) and the two cannot drift apart.

The first screen is the first fenced ```sh block of README.md: its lines that are neither blank nor
comments are the commands (a line ending in a backslash continues on the next). Exit status 2, with the
reason on stderr, when the block is missing or does not hold exactly EXPECTED commands. Standard library
only: it runs before anything is installed.
"""

from __future__ import annotations

import sys
from typing import List

EXPECTED = 2


class ReadmeError(Exception):
    """The README's first screen is not what CI can run."""


def first_screen(text: str) -> List[str]:
    """The commands of the first ```sh block of a Markdown text, in order; raises ReadmeError."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() in ("```sh", "```bash", "```shell"))
    except StopIteration:
        raise ReadmeError("no ```sh block") from None
    commands: List[str] = []
    pending = ""
    for line in lines[start + 1:]:
        if line.strip() == "```":
            break
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        commands.append(pending + line)
        pending = ""
    else:
        raise ReadmeError("the first ```sh block is not closed")
    if pending:
        raise ReadmeError("the last command of the first ```sh block ends in a backslash")
    return commands


def main(argv: List[str]) -> int:
    path = argv[1] if len(argv) > 1 else "README.md"
    try:
        with open(path, encoding="utf-8") as handle:
            commands = first_screen(handle.read())
        if len(commands) != EXPECTED:
            raise ReadmeError(f"the first ```sh block holds {len(commands)} commands, not {EXPECTED}")
    except (OSError, ReadmeError) as exc:
        print(f"readme_commands: {path}: {exc}", file=sys.stderr)
        return 2
    for command in commands:
        print(command)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
