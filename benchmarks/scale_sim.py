"""A synthetic AliProducts-shaped job measured stage by stage on this machine (issue 12, item 7).

Makes a training CSV of 2,552,385 rows in 50,030 classes with a long-tailed count profile (a power law from ~2,000
images in the largest class down to 4, the shape of the paper's Figure 1), whose paths point at a small pool of real
JPEG files (so the existence check and a decode are real, at the cost of a pool, not of 2.55M files). Then measures:

- manifest load: a fresh process reads the CSV (no cache: parse + vectorized label encoding + the image existence
  check by folder listing), then a second fresh process loads it again from the content-hash cache; wall seconds and
  peak resident memory above the process's baseline (VmHWM after resetting it);
- loader worker: a forked worker's private memory (USS) growth over one epoch of index lookups of all rows (what a
  DataLoader worker does besides decoding), with the paths as a StringColumn, and for contrast as an object array;
- loss table: file size of 2.55M rows, without and with the recorder's probability of the given label and top-5, and
  the time to save and load it;
- select: the paper's selection (5 lowest-loss samples per class, bands) over the 2.55M-row table, and the suspects
  CSV of the 5 worst per class;
- ensemble: the streaming top-1 of `--ens-models` heads over N x K x D features (default 10,000 x 50,030 x 2,048),
  with the scan `fast="auto"` chooses on this CPU.

The last line printed is one line of `name=value` figures. The defaults take ~4 CPU minutes on 2 cores and a few GB of
disk in `--workdir`; `--ens-rows` (and `--ens-models`) size the ensemble part, the slowest on CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROWS, CLASSES = 2_552_385, 50_030
MIB = 1 << 20


# -- measuring -------------------------------------------------------------------------------------------------------
def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> float:
    """Reset VmHWM to the current RSS; returns the RSS (MiB), the baseline for a peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return status_mib("VmRSS")


def worker_growth_mib(paths, labels: np.ndarray, ids: np.ndarray) -> float:
    """USS growth of a forked process that looks up every row once in a shuffled order (a loader worker's epoch)."""
    from lossguided.data.loader import private_memory_mib

    order = np.random.default_rng(0).permutation(len(labels))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            before, total = private_memory_mib(), 0
            for j in range(len(order)):
                i = order[j]
                total += len(paths[i]) + int(labels[i]) + int(ids[i])
            os.write(write, str(private_memory_mib() - before).encode())
        finally:
            os._exit(0)
    os.close(write)
    out = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    return float(out)


# -- the synthetic data ----------------------------------------------------------------------------------------------
def long_tail_counts(n_rows: int, n_classes: int, *, largest: int = 2000, smallest: int = 4) -> np.ndarray:
    """Per-class counts [K] summing to n_rows: largest * rank^-a clipped at `smallest`, `a` found by bisection."""
    rank = np.arange(1, n_classes + 1, dtype=np.float64)
    lo, hi = 0.01, 5.0
    for _ in range(60):
        a = (lo + hi) / 2
        total = np.maximum(largest * rank**-a, smallest).round().sum()
        lo, hi = (a, hi) if total > n_rows else (lo, a)
    counts = np.maximum(largest * rank**-a, smallest).round().astype(np.int64)
    counts[: abs(n_rows - counts.sum())] += np.sign(n_rows - counts.sum())
    return counts


def make_job(work: Path, n_rows: int, n_classes: int, pool: int) -> Path:
    """The pool of real images and the CSV; reused when already there."""
    from PIL import Image

    csv_path = work / "train.csv"
    if csv_path.is_file():
        return csv_path
    rng = np.random.default_rng(0)
    names = [f"pool/{i // 10:03d}/{h:032x}.jpg" for i, h in enumerate(rng.integers(0, 2**63, pool))]
    for name in names:
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(work / name, quality=85)
    counts = long_tail_counts(n_rows, n_classes)
    labels = np.repeat(rng.permutation(n_classes), counts)  # class-grouped, as the data set is laid out
    with open(csv_path, "w") as f:
        f.write("id,path,label\n")
        step = 1 << 18
        for a in range(0, n_rows, step):
            b = min(a + step, n_rows)
            f.write("".join(f"{i},{names[i % pool]},{labels[i]}\n" for i in range(a, b)))
    return csv_path


# -- stages, each in a fresh process where its peak memory is measured -----------------------------------------------
def child_manifest(csv_path: str, cache: str) -> dict:
    """`cache` "parse-only": no cache and no existence check, the parse alone."""
    parse_only = cache == "parse-only"
    if parse_only:
        os.environ["LOSSGUIDED_CACHE"] = "off"
    from lossguided.data.manifest import read_csv

    base = reset_peak()
    start, cpu = time.perf_counter(), time.process_time()
    m = read_csv(csv_path, cache_dir=None if parse_only else cache, check_files=not parse_only)
    out = {
        "seconds": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu,
        "peak_mib": status_mib("VmHWM") - base,
        "rows": len(m),
        "classes": len(m.classes),
        "paths_mb": m.paths.nbytes / 1e6,
    }
    if not parse_only:
        out["worker_growth_mib"] = worker_growth_mib(m.paths, m.labels, m.ids)
    return out


def child_worker_objects(csv_path: str, cache: str) -> dict:
    from lossguided.data.manifest import read_csv

    m = read_csv(csv_path, cache_dir=cache)
    paths = np.asarray(m.paths)  # the object array the manifest used to hold
    return {"worker_growth_object_mib": worker_growth_mib(paths, m.labels, m.ids)}


def run_child(name: str, *args: str) -> dict:
    cmd = [sys.executable, __file__, "--child", name, *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table_stage(work: Path, csv_path: Path, cache: str) -> dict:
    from lossguided.data.manifest import read_csv
    from lossguided.losstable import LossTable
    from lossguided.refine.apply import select_from_table
    from lossguided.report.suspects import write_suspects

    m = read_csv(csv_path, cache_dir=cache)
    n, k = len(m), len(m.classes)
    rng = np.random.default_rng(1)
    losses = rng.gamma(0.6, 1.5, n).astype(np.float32)
    preds = np.where(rng.random(n) < 0.8, m.labels, rng.integers(0, k, n))
    top = np.stack([preds] + [rng.integers(0, k, n) for _ in range(4)], axis=1)
    probs = np.sort(rng.dirichlet(np.full(6, 0.3), n)[:, :5], axis=1)[:, ::-1].astype(np.float16)
    table = LossTable(
        m.ids, m.labels, losses, np.full(n, 2), preds, m.paths, m.classes, None, np.exp(-losses), top, probs
    )
    out = {}
    start = time.perf_counter()
    table.save(work / "losses.npz")
    out["table_save_s"] = time.perf_counter() - start
    out["table_mb"] = (work / "losses.npz").stat().st_size / 1e6
    start = time.perf_counter()
    LossTable.load(work / "losses.npz")
    out["table_load_s"] = time.perf_counter() - start
    base = LossTable(m.ids, m.labels, losses, np.full(n, 2), preds, m.paths, m.classes)
    base.save(work / "losses_base.npz")
    out["table_base_mb"] = (work / "losses_base.npz").stat().st_size / 1e6
    start = time.perf_counter()
    ids = select_from_table(table, bands=["1-5", "median"], drop_loss_above=9.0, drop_quantile=None, per_class=None)
    out["select_s"] = time.perf_counter() - start
    out["selected"] = len(ids)
    start = time.perf_counter()
    write_suspects(table, work / "suspects.csv", per_class=5)
    out["suspects_s"] = time.perf_counter() - start
    return out


def ensemble_stage(n_rows: int, n_classes: int, dim: int, n_models: int) -> dict:
    import torch

    from lossguided.ensemble import choose_scan, ensemble_topk

    gen = torch.Generator().manual_seed(0)
    models = []
    for _ in range(n_models):
        feats = torch.randn(n_rows, dim, generator=gen).relu_().to(torch.float16).numpy()
        weight = (torch.randn(n_classes, dim, generator=gen) / dim**0.5).numpy()
        models.append((feats, weight, (0.1 * torch.randn(n_classes, generator=gen)).numpy(), 1))
    choice = choose_scan("cpu")
    start = time.perf_counter()
    ensemble_topk(models, k=1, fast="auto")
    return {"ensemble_s": time.perf_counter() - start, "ensemble_scan": choice.name}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--classes", type=int, default=CLASSES)
    parser.add_argument("--pool", type=int, default=1000, help="real image files the paths point at")
    parser.add_argument("--workdir", default="/tmp/lossguided-scale-sim")
    parser.add_argument("--ens-rows", type=int, default=10_000, help="ensemble rows N (0 skips the ensemble)")
    parser.add_argument("--ens-dim", type=int, default=2048)
    parser.add_argument("--ens-models", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("STAGE", "CSV", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        stage, csv_path, cache = args.child
        fn = {"manifest": child_manifest, "objects": child_worker_objects}[stage]
        print(json.dumps(fn(csv_path, cache)))
        return 0

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    for old in (cache / "manifests").glob("*") if (cache / "manifests").is_dir() else []:  # start cold
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    start = time.perf_counter()
    csv_path = make_job(work, args.rows, args.classes, args.pool)
    print(
        f"job: {csv_path} ({csv_path.stat().st_size / 1e6:.0f} MB, made in {time.perf_counter() - start:.0f} s), "
        f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}"
    )
    fig: dict = {}
    parse = run_child("manifest", str(csv_path), "parse-only")
    cold = run_child("manifest", str(csv_path), str(cache))
    warm = run_child("manifest", str(csv_path), str(cache))
    print(
        f"manifest: parse {parse['seconds']:.1f} s ({parse['cpu_s']:.1f} CPU s) peak +{parse['peak_mib']:.0f} MiB; "
        f"first load (parse + existence check, then cached) {cold['seconds']:.1f} s ({cold['cpu_s']:.1f} CPU s) "
        f"peak +{cold['peak_mib']:.0f} MiB; from the cache {warm['seconds']:.2f} s peak +{warm['peak_mib']:.0f} MiB "
        f"(mostly memory-mapped, shared); {cold['rows']} rows, {cold['classes']} classes, "
        f"paths {cold['paths_mb']:.0f} MB"
    )
    objects = run_child("objects", str(csv_path), str(cache))
    print(
        f"worker: USS growth over an epoch of lookups {warm['worker_growth_mib']:.1f} MiB "
        f"(object-array paths: {objects['worker_growth_object_mib']:.0f} MiB)"
    )
    fig |= {
        "manifest_parse_s": parse["seconds"],
        "manifest_parse_cpu_s": parse["cpu_s"],
        "manifest_parse_peak_mib": parse["peak_mib"],
        "manifest_cold_s": cold["seconds"],
        "manifest_cold_cpu_s": cold["cpu_s"],
        "manifest_cold_peak_mib": cold["peak_mib"],
        "manifest_cached_s": warm["seconds"],
        "manifest_cached_peak_mib": warm["peak_mib"],
        "worker_growth_mib": warm["worker_growth_mib"],
        "worker_growth_object_mib": objects["worker_growth_object_mib"],
    }
    tab = table_stage(work, csv_path, str(cache))
    print(
        f"loss table: {tab['table_base_mb']:.0f} MB (+ p_label and top-5: {tab['table_mb']:.0f} MB), save "
        f"{tab['table_save_s']:.1f} s, load {tab['table_load_s']:.1f} s; select {tab['select_s']:.1f} s "
        f"({tab['selected']} ids); suspects (5 a class) {tab['suspects_s']:.1f} s"
    )
    fig |= {k: v for k, v in tab.items() if k != "selected"}
    if args.ens_rows:
        ens = ensemble_stage(args.ens_rows, args.classes, args.ens_dim, args.ens_models)
        print(
            f"ensemble: {args.ens_models} x N={args.ens_rows} K={args.classes} D={args.ens_dim} "
            f"{ens['ensemble_s']:.1f} s, {ens['ensemble_scan']} scan"
        )
        fig |= ens
    print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in fig.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
