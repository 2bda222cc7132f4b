"""See the data: exploratory analysis of a manifest (`eda`), a self-contained HTML report of a run (`html`), and the
ranked list of suspected wrong labels with a way to feed corrections back (`suspects`).

Figures use matplotlib's Agg canvas directly (no pyplot state), so everything here runs headless.
"""

from lossguided.report.eda import run_eda
from lossguided.report.html import build_report, write_report
from lossguided.report.pagesize import measure_page_size
from lossguided.report.suspects import rank_suspects, relabel_manifest, write_suspects

__all__ = [
    "build_report",
    "measure_page_size",
    "rank_suspects",
    "relabel_manifest",
    "run_eda",
    "write_report",
    "write_suspects",
]
