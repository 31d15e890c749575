"""`rayiqa report`: a static HTML report of a score run (scores, errors, the evidence behind the
best and worst images, TTA and MOS agreement), read from its Parquet in bounded memory."""
from rayiqa.report.build import REPORT_DIR, write_report

__all__ = ["REPORT_DIR", "write_report"]
