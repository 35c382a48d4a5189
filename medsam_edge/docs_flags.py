"""Flag tables in the docs, generated from the parsers `--help` prints, so they cannot go stale.

A table sits between `<!-- flags:COMMAND -->` and `<!-- /flags:COMMAND -->` in README.md or
docs/*.md; `python -m medsam_edge.docs_flags` (`make docs`) rewrites every one in place,
`--check` only says which files differ (tests/test_docs.py fails on the same difference).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from medsam_edge.atomic import write_text

MARKER = re.compile(r"(<!-- flags:([a-z-]+) -->\n)(.*?)(<!-- /flags:\2 -->)", re.DOTALL)


def subparsers(parser: argparse.ArgumentParser | None = None) -> dict[str, argparse.ArgumentParser]:
    """Each subcommand's own parser, by name, as `medsam-edge COMMAND --help` builds it."""
    if parser is None:
        from medsam_edge.cli import build_parser

        parser = build_parser()
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def invocation(action: argparse.Action) -> str:
    """`--box x0,y0,x1,y1`, `--prompts FILE, --boxes FILE`, `--frames SOURCE [SOURCE ...]`, `source`."""
    if action.choices is not None and action.metavar is None:
        meta = "{" + ",".join(str(c) for c in action.choices) + "}"
    else:
        meta = action.metavar or (action.dest if not action.option_strings else action.dest.upper())
    if not action.option_strings:
        return meta
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    value = {"+": f"{meta} [{meta} ...]", "*": f"[{meta} ...]", "?": f"[{meta}]"}.get(str(action.nargs), meta)
    return ", ".join(f"{name} {value}" for name in action.option_strings)


def describe(action: argparse.Action, prog: str) -> str:
    """The help text as `--help` prints it (`%(default)s` filled in), on one line."""
    text = action.help or ""
    if "%" in text:
        text = text % dict(vars(action), prog=prog)
    return " ".join(text.split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(command: str, parsers: dict[str, argparse.ArgumentParser] | None = None) -> str:
    """The markdown table of one subcommand's arguments, in `--help`'s order."""
    parsers = subparsers() if parsers is None else parsers
    if command not in parsers:
        raise KeyError(f"no subcommand {command!r} (known: {', '.join(parsers)})")
    p = parsers[command]
    rows = ["| Argument | What it does |", "| --- | --- |"]
    for action in p._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        rows.append(f"| `{_cell(invocation(action))}` | {_cell(describe(action, p.prog))} |")
    return "\n".join(rows) + "\n"


def render(text: str, parsers: dict[str, argparse.ArgumentParser] | None = None) -> str:
    """`text` with every marked table replaced by the one the parsers give now."""
    parsers = subparsers() if parsers is None else parsers
    return MARKER.sub(lambda m: m.group(1) + table(m.group(2), parsers) + m.group(4), text)


def doc_files(root: Path) -> list[Path]:
    """README.md and every page under docs/."""
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m medsam_edge.docs_flags", description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("."), help="the repository (default: here)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a table is out of date")
    args = ap.parse_args(argv)
    parsers = subparsers()
    stale = []
    for path in doc_files(args.root):
        old = path.read_text(encoding="utf-8")
        new = render(old, parsers)
        if new != old:
            stale.append(path)
            if not args.check:
                write_text(path, new)
    verb = "out of date (run `make docs`)" if args.check else "rewritten"
    for path in stale:
        print(f"{path}: flag tables {verb}", file=sys.stderr)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
