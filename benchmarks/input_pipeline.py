"""Images per second and core of the input pipeline: torchvision's ImageFolder-style baseline against our decode path
and our preprocessed formats, all measured in this one process (the ratios are what count; CPU timings are noisy).

Makes ``--images`` JPEGs of product-photo sizes (``--min-side``..``--max-side`` px a side, seeded) by cropping and
rescaling scikit-learn's two sample photos (china.jpg, flower.jpg), then times one pass over all of them, with one
thread and no DataLoader workers (``torch.set_num_threads(1)``, ``num_workers=0``), best of ``--repeat``:

* baseline: ``PIL.Image.open(...).convert("RGB")``, ``transforms.Resize((S, S))``, ``RandomHorizontalFlip``,
  ``ToTensor``, ``Normalize`` (the paper's mean/std), per image, then the default collate;
* decode: our dataset (``draft`` DCT downscaling + vectorized resize, uint8 out) and ``BatchTransform`` (flip +
  normalize) on each batch, through ``create_loader`` as training does;
* preprocessed: ``lossguided preprocess`` once (``--format``; the other format is timed too), then reading it the same
  way; plus the bytes per image the format takes on disk.

The last line printed is ``decode_speedup=X preprocessed_speedup=Y bytes_per_image=Z`` (speedups over the baseline,
Y and Z for ``--format``); the targets are X >= 2.5 and Y >= 8.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from lossguided.data.loader import create_loader
from lossguided.data.manifest import read_csv
from lossguided.data.preprocessed import preprocess, read_preprocessed
from lossguided.data.sources import make_dataset
from lossguided.data.transforms import PAPER_MEAN, PAPER_STD, BatchTransform


def make_photos(root: Path, n: int, *, seed: int, min_side: int, max_side: int) -> Path:
    """n JPEGs (quality 85-95) of random crops of the sample photos rescaled to min..max px a side; a CSV manifest."""
    from sklearn.datasets import load_sample_image

    rng = np.random.default_rng(seed)
    photos = [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = ["path,label,id"]
    for i in range(n):
        a = photos[i % 2]
        h, w = a.shape[:2]
        ch, cw = int(rng.integers(h // 2, h + 1)), int(rng.integers(w // 2, w + 1))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        out_w, out_h = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
        img = Image.fromarray(a[y : y + ch, x : x + cw]).resize((out_w, out_h), Image.BICUBIC)
        img.save(root / "img" / f"{i:05d}.jpg", quality=int(rng.integers(85, 96)))
        rows.append(f"img/{i:05d}.jpg,SKU-{i % 10},{10 * i + 3}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root / "train.csv"


class BaselineFolder(Dataset):
    """torchvision's ImageFolder loading: pil_loader (open, convert RGB) then the per-image transform."""

    def __init__(self, paths: list[str], labels: list[int], size: int) -> None:
        from torchvision import transforms as T

        self.paths, self.labels = paths, labels
        self.transform = T.Compose(
            [
                T.Resize((size, size)),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize([m / 255 for m in PAPER_MEAN], [s / 255 for s in PAPER_STD]),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with open(self.paths[i], "rb") as f:
            img = Image.open(f)
            img = img.convert("RGB")
        return self.transform(img), self.labels[i]


def time_baseline(ds: Dataset, batch_size: int) -> float:
    start = time.perf_counter()
    for x, _ in DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0):
        assert x.dtype == torch.float32
    return time.perf_counter() - start


def time_ours(ds: Dataset, batch_size: int) -> float:
    transform = BatchTransform(flip=True).train()
    start = time.perf_counter()
    for x, _, _ in create_loader(ds, batch_size=batch_size, shuffle=True, workers=0, pin_memory=False):
        out = transform(x)
        assert out.dtype == torch.float32
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=300, help="how many JPEGs to make (default 300)")
    p.add_argument("--image-size", type=int, default=256, help="square input size (paper: 256)")
    p.add_argument("--min-side", type=int, default=600)
    p.add_argument("--max-side", type=int, default=1600)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--format",
        choices=["jpeg-shards", "memmap"],
        default="jpeg-shards",
        help="the preprocessed format of the last line (both are timed)",
    )
    p.add_argument("--repeat", type=int, default=3, help="passes per pipeline; the best counts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="where to write the images (default: a temporary folder, removed after)")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        csv_path = make_photos(root, args.images, seed=args.seed, min_side=args.min_side, max_side=args.max_side)
        manifest = read_csv(csv_path)
        size, n = args.image_size, len(manifest)
        mb = sum(os.path.getsize(p) for p in manifest.paths) / n / 1024
        print(
            f"{n} JPEGs, {args.min_side}-{args.max_side} px a side, {mb:.0f} KB each; image size {size}; "
            f"batch {args.batch_size}; 1 thread, no workers; best of {args.repeat}"
        )

        stored, prep_rate = {}, {}
        for fmt in ("jpeg-shards", "memmap"):
            start = time.perf_counter()
            summary = preprocess(manifest, root / fmt, image_size=size, storage=fmt, workers=0, progress=False)
            prep_rate[fmt] = n / (time.perf_counter() - start)
            stored[fmt] = (read_preprocessed(root / fmt), summary["bytes_per_image"])

        pipelines = {
            "baseline": (time_baseline, BaselineFolder(list(manifest.paths), manifest.labels.tolist(), size)),
            "decode": (time_ours, make_dataset(manifest, image_size=size)),
            **{f"preprocessed {fmt}": (time_ours, make_dataset(m, image_size=size)) for fmt, (m, _) in stored.items()},
        }
        best = {name: float("inf") for name in pipelines}
        for _ in range(args.repeat):  # interleaved, so that a slow spell of the machine hits every pipeline alike
            for name, (fn, ds) in pipelines.items():
                best[name] = min(best[name], fn(ds, args.batch_size))

        # The decode path's pixels against the baseline's (before ToTensor/Normalize), as a sanity check.
        ours = make_dataset(manifest, image_size=size)
        diffs = []
        for i in range(min(n, 20)):
            with Image.open(manifest.paths[i]) as img:
                ref = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR)).transpose(2, 0, 1)
            diffs.append(np.abs(ours[i][0].numpy().astype(np.int16) - ref.astype(np.int16)).mean())

        rate = {name: n / t for name, t in best.items()}
        for name in pipelines:
            print(f"{name:26s} {rate[name]:8.1f} images/s per core   {rate[name] / rate['baseline']:6.2f}x baseline")
        for fmt, (_, bpi) in stored.items():
            print(f"{fmt:26s} {bpi:8.0f} bytes per image   written at {prep_rate[fmt]:.0f} images/s (1 process)")
        print(f"decode path vs baseline pixels: mean abs diff {np.mean(diffs):.2f} of 255 (max {np.max(diffs):.2f})")
        decode_speedup = rate["decode"] / rate["baseline"]
        prep_speedup = rate[f"preprocessed {args.format}"] / rate["baseline"]
        print(
            f"decode_speedup={decode_speedup:.2f} preprocessed_speedup={prep_speedup:.2f} "
            f"bytes_per_image={stored[args.format][1]:.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
