"""Measure the `lossguided report` page at AliProducts scale: build the real page for a synthetic run (50,000
classes of 20 samples, deterministic product-like in-memory images, 20% wrong labels, the 1-5 selection) and print
its size as JSON: total bytes, thumbnail bytes, bytes per thumbnail, and the build time.

    python benchmarks/report_page_size.py                       # the defaults: 500 worst classes get thumbnails
    python benchmarks/report_page_size.py --max-classes 2000 --thumbs-per-class 3 --out /tmp/page.html
"""

from __future__ import annotations

import argparse
import json

from lossguided.report.html import ReportOptions
from lossguided.report.pagesize import measure_page_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=50_000)
    p.add_argument("--samples-per-class", type=int, default=20)
    p.add_argument("--max-classes", default="500", help="worst classes with thumbnails, or 'all'")
    p.add_argument("--thumbs-per-class", type=int, default=6)
    p.add_argument("--thumb-size", type=int, default=48)
    p.add_argument("--out", help="also write the page here (open it in a browser to try it)")
    a = p.parse_args()
    opts = ReportOptions(
        thumbs_per_class=a.thumbs_per_class,
        thumb_size=a.thumb_size,
        max_classes=None if a.max_classes == "all" else int(a.max_classes),
    )
    print(json.dumps(measure_page_size(a.classes, samples_per_class=a.samples_per_class, options=opts, out=a.out)))


if __name__ == "__main__":
    main()
