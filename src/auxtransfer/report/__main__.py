"""``python -m auxtransfer.report DIR``: the report of every run under DIR.

Writes ``DIR/report.md`` with PNG figures beside it (``--out`` writes them elsewhere);
``--format json`` also writes ``report.json``. Run directories that cannot be reported
are named on stderr, with the reason, and left out.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .gather import RUN_FILES as _RUN_FILES
from .write import FORMATS

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m auxtransfer.report",
        description="Gather every run directory under DIR (at any depth) and write report.md "
        "with the paper's figures, the long-tail table and paired statistics.",
    )
    parser.add_argument("dir", metavar="DIR", help="folder holding run directories")
    parser.add_argument("--format", choices=FORMATS, default="markdown",
                        help="json: also write report.json with the numbers behind every figure and table (default: markdown)")  # fmt: skip
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="folder for report.md and the figures (default: DIR)")  # fmt: skip
    parser.add_argument("--no-run-curves", action="store_true",
                        help="skip the training/test curves of every run (one PNG per run)")  # fmt: skip
    args = parser.parse_args(argv)
    root = Path(args.dir)
    if not root.is_dir():
        parser.error(f"DIR: expected a folder of run directories, but got {args.dir!r}")
    if args.out is None and any((root / name).exists() for name in _RUN_FILES):
        parser.error(
            f"DIR: {args.dir!r} is itself a run directory, which the report only reads: "
            f"give the folder above it, or --out for the report's files"
        )
    out = Path(args.out) if args.out is not None else root
    if out.exists() and not out.is_dir():
        parser.error(f"--out: expected a folder, but got the file {args.out!r}")
    try:
        import matplotlib  # noqa: F401
        import scipy  # noqa: F401
    except ImportError as error:
        parser.exit(2, f"{parser.prog}: error: the report needs scipy and matplotlib "
                       f"({error}); install them with: pip install 'auxtransfer[report]'\n")  # fmt: skip

    from .write import write_report

    report = write_report(root, out, format=args.format, run_curves=not args.no_run_curves)
    for item in report["skipped"]:
        print(f"skipped {item['id']}: {item['reason']}", file=sys.stderr)
    if not report["runs"]:
        print(f"no finished runs under {root}", file=sys.stderr)
    written = "report.md" + (" and report.json" if args.format == "json" else "")
    print(
        f"wrote {written} ({len(report['runs'])} run(s), {len(report['sections'])} section(s)) to {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
