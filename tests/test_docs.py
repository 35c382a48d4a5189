"""The docs say what the commands do now: flag tables as `--help` would write them, and no
`--flag` in README.md or docs/*.md that the command it is written with does not take."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

from medsam_edge.cli import build_parser
from medsam_edge.docs_flags import MARKER, doc_files, render, subparsers

ROOT = Path(__file__).resolve().parents[1]
FLAG = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")
FENCE = re.compile(r"^```(\w*)")
INLINE = re.compile(r"`([^`\n]+)`")
# `medsam-edge [-v] COMMAND ...` or `python -m medsam_edge.X ...`, at the start of a shell line or a span.
COMMAND = re.compile(r"^(?:\$ )?(?:medsam-edge((?:\s+-\S+)*)\s+([a-z]+)|python -m (medsam_edge[\w.]*))(.*)$")
DOCS = doc_files(ROOT)


def options(parser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


@functools.lru_cache(maxsize=None)
def module_options(module: str) -> frozenset[str]:
    """The options `python -m MODULE --help` lists: each script's own parser, as a user meets it."""
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"python -m {module} --help failed: {out.stderr.strip()[-300:]}"
    return frozenset(FLAG.findall(out.stdout))


TOP = build_parser()
SUB = subparsers(TOP)
ANY = options(TOP).union(*(options(p) for p in SUB.values()))


def mentions(text: str):
    """(line number, where the flag must exist, flag) for every flag the page names outside its tables.

    A shell line or a code span that starts with a command is held to that command's parser;
    a span that starts with a subcommand's name (`bench --stream`) to that subcommand's; any
    other flag to some subcommand's parser. Python blocks and other programs' lines are skipped.
    """
    text = MARKER.sub(lambda m: m.group(1) + "\n" * m.group(3).count("\n") + m.group(4), text)
    fence = None
    for n, line in enumerate(text.splitlines(), 1):
        f = FENCE.match(line.strip())
        if f:
            fence = None if fence is not None else f.group(1) or "sh"
            continue
        if fence is not None:
            if fence in ("sh", "bash", "console"):
                yield from _command_line(n, line.split("#", 1)[0].strip())
            continue
        spans = INLINE.findall(line)
        for span in spans:
            yield from _command_line(n, span.strip(), prose=True)
        prose = INLINE.sub(" ", line)
        for flag in FLAG.findall(prose):
            if flag.startswith("--"):
                yield n, "any", flag


def _command_line(n: int, line: str, prose: bool = False):
    m = COMMAND.match(line)
    if m:
        before, command, module, rest = m.groups()
        if module:
            for flag in FLAG.findall(rest):
                yield n, f"module:{module}", flag
            return
        for flag in FLAG.findall(before or ""):
            yield n, "top", flag
        where = command if command in SUB else "unknown-command:" + command
        for flag in FLAG.findall(rest):
            yield n, where, flag
        return
    first = line.split(maxsplit=1)[0] if line.split() else ""
    if prose and first in SUB:
        for flag in FLAG.findall(line[len(first):]):
            yield n, first, flag
    elif prose:
        for flag in FLAG.findall(line):
            if flag.startswith("--"):
                yield n, "any", flag
    # Any other shell line (make, pip, tritonserver) is another program's: its flags are its own.


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_flag_tables_match_help(path):
    text = path.read_text(encoding="utf-8")
    assert render(text, SUB) == text, f"{path.name}: flag tables differ from --help; run `make docs`"


def test_every_table_names_a_command():
    named = [m.group(2) for p in DOCS for m in MARKER.finditer(p.read_text(encoding="utf-8"))]
    assert named, "no generated flag table in the docs"
    assert set(named) <= set(SUB), f"tables for unknown subcommands: {set(named) - set(SUB)}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_flag_mentioned_exists(path):
    text = path.read_text(encoding="utf-8")
    # A page with flag tables is about those commands: its prose names their flags, and a flag
    # of another command is written with it (`run --rebuild`). Other pages: any subcommand's.
    own = {m.group(2) for m in MARKER.finditer(text)}
    page = set().union(*(options(SUB[c]) for c in own if c in SUB)) if own else ANY
    wrong = []
    for n, where, flag in mentions(text):
        if where == "any":
            known, where = page, ("/".join(sorted(own)) if own else "any command")
        elif where == "top":
            known = options(TOP)
        elif where.startswith("module:"):
            known = module_options(where.split(":", 1)[1])
        elif where.startswith("unknown-command:"):
            wrong.append(f"{path.name}:{n}: no subcommand {where.split(':', 1)[1]!r}")
            continue
        else:
            known = options(SUB[where])
        if flag not in known:
            wrong.append(f"{path.name}:{n}: {flag} is not an option of {where}")
    assert not wrong, "\n".join(wrong)


def test_the_checker_catches_a_wrong_flag():
    """The scan above must see flags where the docs put them, or it passes by seeing nothing."""
    page = "```\nmedsam-edge run m clip.mp4 --box 1,2,3,4 --no-such-flag\n```\nsee `bench --stream` and --nope\n"
    found = {(where, flag) for _, where, flag in mentions(page)}
    assert {("run", "--box"), ("run", "--no-such-flag"), ("bench", "--stream"), ("any", "--nope")} <= found
    assert "--no-such-flag" not in options(SUB["run"]) and "--stream" in options(SUB["bench"])


def test_make_docs_rewrites_a_stale_table(tmp_path):
    """`make docs` is the one command that brings every table back to `--help`."""
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "x.md"
    page.write_text("intro\n<!-- flags:info -->\nold\n<!-- /flags:info -->\nend\n", encoding="utf-8")
    check = [sys.executable, "-m", "medsam_edge.docs_flags", "--root", str(tmp_path)]
    assert subprocess.run(check + ["--check"], capture_output=True).returncode == 1
    assert subprocess.run(check, capture_output=True).returncode == 0
    text = page.read_text(encoding="utf-8")
    assert "| `--json` |" in text and "old" not in text and text.endswith("<!-- /flags:info -->\nend\n")
    assert subprocess.run(check + ["--check"], capture_output=True).returncode == 0


LINK = re.compile(r"\]\(([^)\s]+)\)")
# Pages other branches are writing; drop a name once its page is merged.
PENDING: set[str] = set()  # pages another branch is still writing (a link to one may dangle)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but hyphens dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_lead_somewhere(path):
    wrong = []
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            if dest.name not in PENDING:
                wrong.append(f"{target}: no such file")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            wrong.append(f"{target}: no heading with that anchor in {dest.name}")
    assert not wrong, f"{path.name}: " + "; ".join(wrong)


def test_code_points_at_sections_that_exist():
    """Comments say `docs/decisions.md#section` for their figures: the section must be there
    (pages not merged yet are not checked)."""
    sections = {p.name: anchors(p) for p in (ROOT / "docs").glob("*.md")}
    wrong = []
    packages = [d for d in ROOT.iterdir() if d.is_dir() and (d / "__init__.py").is_file()]
    files = [ROOT / "pyproject.toml", ROOT / "Makefile", *(py for d in packages for py in d.rglob("*.py"))]
    assert len(files) > 50, f"found only {len(files)} files to scan under {ROOT}"
    for f in files:
        for page, anchor in re.findall(r"docs/([\w-]+\.md)#([\w-]+)", f.read_text(encoding="utf-8")):
            if page in sections and anchor not in sections[page]:
                wrong.append(f"{f.relative_to(ROOT)}: docs/{page}#{anchor}")
    assert not wrong, "no such section: " + "; ".join(wrong)
