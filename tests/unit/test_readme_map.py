"""The picture in the README's "How it works" names every module of `agent/` and nothing else, each with
its purpose, so a newcomer's map cannot drift from the code (a module added, moved or removed fails here);
and its layers are the code's: no module imports one of a layer drawn above its own, but for the few
imports the README names.

The picture is the first fenced block after the "## How it works" heading. Each `━━` heading starts a
layer; the layers are drawn top down. Its rows: a line starting with `agent/` names a package
(`agent/cli/`) or a module (`agent/runner.py`); an indented line names a module or subpackage relative to
the package of the row above it at the left margin (`  parser.py` under `agent/cli/`, `  pack.py` under
`agent/store/repository.py`). Arrows (`│`, `▼`) and blank lines are no rows. A package's `__init__.py` is
described by its package's row.
"""

from __future__ import annotations

import os
import re
from typing import Dict, List, NamedTuple

import agent
from tests.unit.test_imports import import_graph

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(agent.__file__)))
HEADING = "## How it works"
# (importer, imported) pairs that reach up a layer, each named in the README's text above the picture
REACHING_UP = {
    ("agent.state", "agent.report"),  # state.py keeps RunReports
    ("agent.logs", "agent.report.schema"),  # logs.py escapes text as reports do
    ("agent.config.loader", "agent.crypt.settings"),  # the [encryption] settings value
    ("agent.config.model", "agent.crypt.settings"),
    ("agent.config.loader", "agent.backend.s3"),  # an s3: location checked by the S3 backend's parser
}


class Row(NamedTuple):
    """One row of the picture: a module's or a package's path (`agent/cli/parser.py`, `agent/cli/`), what
    it is for, and its layer (0 at the top)."""

    path: str
    purpose: str
    layer: int


def picture(readme: str) -> List[str]:
    """The lines of the first fenced block after the heading; raises AssertionError when there is none."""
    after = readme.split(f"\n{HEADING}\n", 1)
    assert len(after) == 2, f"README.md has no '{HEADING}' section"
    block = re.search(r"^```[^\n]*\n(.*?)^```", after[1], re.S | re.M)
    assert block is not None, f"no fenced picture under '{HEADING}'"
    return block.group(1).splitlines()


def rows(lines: List[str]) -> List[Row]:
    """The picture's rows, in order."""
    found: List[Row] = []
    package, layer = "", -1
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("━"):
            layer += 1
            continue
        if not stripped or stripped[0] in "│▼":
            continue
        name, _, purpose = stripped.partition(" ")
        if not line.startswith(" "):
            assert name.startswith("agent/"), f"a row at the left margin names agent/...: {line!r}"
            package = name if name.endswith("/") else os.path.dirname(name) + "/"
            path = name
        else:
            assert package, f"an indented row before any package: {line!r}"
            path = package + name
        found.append(Row(path, purpose.strip(), layer))
    return found


def dotted(path: str) -> str:
    """`agent/cli/parser.py` -> `agent.cli.parser`, `agent/cli/` -> `agent.cli`."""
    path = path.rstrip("/")
    return (path[:-len(".py")] if path.endswith(".py") else path).replace("/", ".")


def module_layers(found: List[Row]) -> Dict[str, int]:
    """module name -> layer (`agent.cli.parser`). A package's facade (`agent.store`) is in its package
    row's layer, or else in the highest (top-most) layer of its modules."""
    layer = {dotted(row.path): row.layer for row in found}
    drawn = {dotted(row.path) for row in found if row.path.endswith("/")}
    for name, at in list(layer.items()):
        parent = name.rpartition(".")[0]
        while parent not in ("", "agent"):
            if parent not in drawn:
                layer[parent] = min(layer.get(parent, at), at)
            parent = parent.rpartition(".")[0]
    return layer


def modules_in_tree() -> List[str]:
    """Every module of agent/ but the packages' __init__.py, as paths relative to the checkout."""
    found = []
    for directory, _, files in os.walk(os.path.join(ROOT, "agent")):
        found.extend(os.path.relpath(os.path.join(directory, name), ROOT) for name in files
                     if name.endswith(".py") and name != "__init__.py")
    return sorted(found)


def readme_rows() -> List[Row]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        return rows(picture(handle.read()))


def test_the_readme_picture_names_every_module_and_only_those():
    found = readme_rows()
    named = {row.path: row.purpose for row in found if not row.path.endswith("/")}
    tree = modules_in_tree()
    missing = [path for path in tree if path not in named]
    stale = [row.path for row in found if row.path not in tree and not os.path.isdir(os.path.join(ROOT, row.path))]
    assert (missing, stale) == ([], []), (
        f"README.md '{HEADING}': add a row with its purpose for each module missing from the picture, "
        f"remove or rename the stale ones.\nmissing: {missing}\nstale: {stale}")
    assert [row.path for row in found if not row.purpose] == []


def test_no_import_reaches_up_the_picture():
    layer = module_layers(readme_rows())
    up = sorted((importer, imported) for importer, targets in import_graph().items() for imported in targets
                if importer in layer and imported in layer and layer[imported] < layer[importer])
    offenders = [f"{importer} -> {imported}" for importer, imported in up if (importer, imported) not in REACHING_UP]
    assert offenders == [], (
        f"README.md '{HEADING}': these imports reach from a layer up to one drawn above it: move the module "
        f"to its layer in the picture, or the import out of it:\n" + "\n".join(offenders))


def test_rows_read_layers_packages_modules_and_relative_names():
    lines = ["━━ TOP ━━", "agent/cli/      the command", "  parser.py     the options",
             "  commands/x.py `x`", "        │ calls", "        ▼", "━━ BOTTOM ━━", "agent/store/repository.py  blobs",
             "  pack.py       packs", "", "agent/runner.py   one run"]
    found = rows(lines)
    assert found == [Row("agent/cli/", "the command", 0), Row("agent/cli/parser.py", "the options", 0),
                     Row("agent/cli/commands/x.py", "`x`", 0), Row("agent/store/repository.py", "blobs", 1),
                     Row("agent/store/pack.py", "packs", 1), Row("agent/runner.py", "one run", 1)]
    assert module_layers(found) == {"agent.cli": 0, "agent.cli.parser": 0, "agent.cli.commands": 0,
                                    "agent.cli.commands.x": 0, "agent.store": 1, "agent.store.repository": 1,
                                    "agent.store.pack": 1, "agent.runner": 1}
