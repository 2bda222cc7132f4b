"""Stage 2 of loss-guided data refinement: pick each class's rank bands by average loss."""

from lossguided.refine.select import Band, parse_band, select, union

__all__ = ["Band", "parse_band", "select", "union"]
