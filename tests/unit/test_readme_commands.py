"""The README's first screen as CI reads it (.ci/readme_commands.py): exactly two commands, read from
the README itself, so that `.ci/run` runs what a new user copies."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, ".ci", "readme_commands.py")
_spec = importlib.util.spec_from_file_location("readme_commands", SCRIPT)
assert _spec is not None and _spec.loader is not None
readme_commands = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_commands)


def extract(path: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, path], capture_output=True, text=True, timeout=30)


def test_the_readme_has_exactly_two_commands_and_ci_keeps_no_copy():
    result = extract(os.path.join(ROOT, "README.md"))
    assert result.returncode == 0, result.stderr
    commands = result.stdout.splitlines()
    assert len(commands) == 2
    assert "backup-agent demo" in commands[0]
    assert "tests/run.sh" in commands[1]
    with open(os.path.join(ROOT, ".ci", "run")) as handle:
        ci = handle.read()
    assert "readme_commands.py README.md" in ci
    for command in commands:
        assert command not in ci
        assert subprocess.run(["bash", "-n", "-c", command], timeout=30).returncode == 0


def test_command_one_calls_sudo_only_when_not_root():
    with open(os.path.join(ROOT, "README.md")) as handle:
        first = readme_commands.first_screen(handle.read())[0]
    words = first.replace(";", " ; ").replace("&&", " && ").split()
    # every apt-get goes through the root-or-sudo prefix; nothing calls a bare sudo
    assert "sudo" not in [words[0]] + [words[i + 1] for i, word in enumerate(words[:-1]) if word in (";", "&&")]
    prefix = first.split(";")[0]
    for uid, expected in (("0", ""), ("1000", "sudo")):
        shown = subprocess.run(["bash", "-c", f'id() {{ echo {uid}; }}; {prefix}; printf %s "$sudo"'],
                               capture_output=True, text=True, timeout=30)
        assert shown.stdout == expected


def test_comments_blank_lines_and_continuations():
    text = ("# t\n\ntext\n```json\n{}\n```\n```sh\n# 1. one\nmake a \\\n  b\n\n   # 2. two\nmake c\n```\n"
            "```sh\nnot this\n```\n")
    assert readme_commands.first_screen(text) == ["make a   b", "make c"]


@pytest.mark.parametrize("text, reason", [
    ("no block\n", "no ```sh block"),
    ("```sh\necho a\n", "not closed"),
    ("```sh\necho a \\\n```\n", "ends in a backslash"),
])
def test_a_first_screen_that_cannot_be_read_is_named(text, reason):
    with pytest.raises(readme_commands.ReadmeError, match=reason):
        readme_commands.first_screen(text)


def test_a_third_command_fails_the_extraction(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("```sh\n# 1.\na\n# 2.\nb\nc\n```\n")
    result = extract(str(readme))
    assert result.returncode == 2 and result.stdout == ""
    assert f"{readme}: the first ```sh block holds 3 commands, not 2" in result.stderr
