"""The shape limits of `agent/`: no module over 600 lines, no function over 80 lines without a reason.

A function longer than 80 lines (from its `def` to its last line, nested functions included) passes only
with a comment `# long: <reason>` on the line right above it (above its decorators, if any); the reason
says why splitting it would make it harder to read, e.g. a table-like definition read top to bottom.
Modules have no such escape: over 600 lines, a module holds more than one concept. Each test lists every
offender, so one run shows all there is to fix. The source is read with `ast`, nothing is imported.
"""

from __future__ import annotations

import ast
import os
import re
from typing import Iterator, List, NamedTuple, Optional

import agent

ROOT = os.path.dirname(os.path.abspath(agent.__file__))
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
REASON = re.compile(r"^\s*# long: \S.*\S")


class Function(NamedTuple):
    """A function's place and length; `reason` is the text of its `# long:` comment, or None."""

    path: str
    name: str
    line: int
    lines: int
    reason: Optional[str]


def source_files() -> List[str]:
    """Every .py file under agent/, as paths relative to the repository root, sorted."""
    found = []
    for directory, _, files in os.walk(ROOT):
        found.extend(os.path.join(directory, name) for name in files if name.endswith(".py"))
    return sorted(os.path.relpath(path, os.path.dirname(ROOT)) for path in found)


def read(relative: str) -> str:
    with open(os.path.join(os.path.dirname(ROOT), relative), encoding="utf-8") as handle:
        return handle.read()


def functions(relative: str, text: str) -> Iterator[Function]:
    """Every function and method of a module (nested ones too), with the reason written above it."""
    lines = text.splitlines()
    for node in ast.walk(ast.parse(text, relative)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [decorator.lineno for decorator in node.decorator_list])
            above = lines[first - 2] if first >= 2 else ""
            match = REASON.match(above)
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            yield Function(relative, node.name, node.lineno, length, match.group(0).strip() if match else None)


def test_no_module_over_600_lines():
    too_long = [f"{path}: {len(read(path).splitlines())} lines" for path in source_files()
                if len(read(path).splitlines()) > MAX_MODULE_LINES]
    listing = "\n".join(too_long)
    assert too_long == [], f"modules over {MAX_MODULE_LINES} lines:\n{listing}"


def test_no_function_over_80_lines_without_a_reason():
    too_long = [f"{f.path}:{f.line} {f.name}: {f.lines} lines"
                for path in source_files() for f in functions(path, read(path))
                if f.lines > MAX_FUNCTION_LINES and f.reason is None]
    listing = "\n".join(too_long)
    assert too_long == [], (f"functions over {MAX_FUNCTION_LINES} lines without a '# long: <reason>' comment "
                            f"above the def:\n{listing}")


def test_the_check_sees_a_long_function_and_its_reason():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    plain = functions("m.py", f"def plain():\n{body}")
    reasoned = functions("m.py", f"# long: a table read top to bottom\n@decorator\ndef reasoned():\n{body}")
    empty = functions("m.py", f"# long:\ndef empty():\n{body}")
    short = functions("m.py", "def short():\n" + body.split("\n", 1)[1])
    assert [(f.name, f.lines, f.reason) for f in plain] == [("plain", MAX_FUNCTION_LINES + 1, None)]
    assert [f.reason for f in reasoned] == ["# long: a table read top to bottom"]
    assert [f.reason for f in empty] == [None]
    assert [f.lines for f in short] == [MAX_FUNCTION_LINES]
