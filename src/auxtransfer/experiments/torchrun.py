"""The examples under ``torchrun``: errors said once, by rank 0, and named in torchrun's report.

torchrun's own ``record`` decorator writes its error file for an exception that escapes
``main``, with the exception's type and traceback. The examples end a call with one line
instead (``parser.error``, or a run that failed), an exit that ``record`` passes through
unrecorded; so they write the file themselves, in the same form, with that line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import NoReturn

__all__ = ["QUIET_RANK_WAIT_S", "report_to_torchrun", "write_torchrun_error"]

#: Under torchrun, how long a rank other than 0 waits before it ends with an error, so that
#: rank 0 has said what is wrong before torchrun ends every process.
QUIET_RANK_WAIT_S = 10.0


def report_to_torchrun(parser: argparse.ArgumentParser) -> None:
    """Under ``torchrun``, ``parser``'s help and errors said once and named in torchrun's
    report.

    Every rank checks the same flags and data: rank 0 prints, the others end with the same
    status silently, though not before rank 0 (torchrun ends every process once one has
    failed, and rank 0 might not have said why yet). Every rank writes its error line to
    the error file torchrun gives it (``TORCHELASTIC_ERROR_FILE``; the others after their
    wait, if torchrun has not ended them), so that the failure report torchrun prints after
    it quotes the error instead of a page on tracebacks, with rank 0 as its root cause.
    """
    quiet = int(os.environ.get("RANK", "0")) != 0
    if "TORCHELASTIC_ERROR_FILE" not in os.environ and not quiet:
        return
    exit_here = parser.exit

    def exit(status: int = 0, message: str | None = None) -> NoReturn:
        if status not in (0, 130) and quiet:
            # torchrun ends this process once rank 0 has ended, which then is the first
            # error in torchrun's report (the earliest written), not this one.
            time.sleep(QUIET_RANK_WAIT_S)
        if status != 0 and message:
            write_torchrun_error(message.strip())
        exit_here(status, None if quiet else message)

    def error(message: str) -> NoReturn:
        parser.print_usage(sys.stderr)
        exit(2, f"{parser.prog}: error: {message}\n")

    parser.exit = exit  # type: ignore[method-assign]
    parser.error = error  # type: ignore[method-assign]
    if quiet:
        parser.print_help = parser.print_usage = lambda file=None: None  # type: ignore[method-assign]


def write_torchrun_error(message: str, callstack: str | None = None) -> None:
    """Under ``torchrun``, ``message`` in the error file it gives this process, in the form
    torchrun's own ``record`` writes; its failure report quotes ``callstack`` (a traceback;
    default: ``message``). The first error written stays."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path is None or os.path.exists(path):
        return
    shown = message if callstack is None else callstack
    entry = {"message": {"message": message,
                         "extraInfo": {"py_callstack": shown, "timestamp": str(int(time.time()))}}}  # fmt: skip
    with contextlib.suppress(OSError):  # the report is torchrun's; the line is said anyway
        Path(path).write_text(json.dumps(entry))
