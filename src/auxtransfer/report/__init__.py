"""The report of a folder of runs: the paper's figures, Table 1 and paired statistics.

``python -m auxtransfer.report DIR`` (or ``auxtransfer-report DIR``) gathers every run
directory under ``DIR`` and writes ``report.md`` with PNG figures beside it. The pieces:
``gather`` reads run directories, ``groups`` places B runs by condition and setting and
pairs them by split, ``stats`` holds the paired statistics (scipy), ``sections`` the
numbers of each part, ``figures`` draws them (matplotlib), ``markdown`` writes the text
and ``write`` puts it together. scipy and matplotlib (the ``report`` extra) are imported
when they are needed.
"""

from .gather import Gathered, Run, Skipped, gather
from .stats import PairedTest, VarianceDecomposition, paired_test, variance_decomposition
from .write import build_report, write_report

__all__ = [
    "Gathered",
    "PairedTest",
    "Run",
    "Skipped",
    "VarianceDecomposition",
    "build_report",
    "gather",
    "paired_test",
    "variance_decomposition",
    "write_report",
]
