"""Which stage loses the accuracy? For one benchmark-v2 setting and seed, three fine-tunes that each swap one
piece of the recipe, next to the recipe's own row (`benchmarks/recipe_fashion_mnist.py` must have run it):

* perfect detection, noisy start - the truly clean samples (the recipe's cap: the 1,000 lowest recorded losses per
  class), fine-tuned as round 1 is, from the noisy pre-trained model;
* perfect detection, from scratch - the same list trained from random weights at the pre-training lr;
* the recipe's own list, from scratch - the recipe's final selection (no true labels), from random weights.

The first two read the injected true labels: a diagnosis of the method, never a way to tune it. Results go to
`benchmarks/results/recipe_v2/<setting>/diagnosis/seed<seed>.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from recipe_fashion_mnist import Bench, _evaluate  # noqa: E402

from lossguided import stages  # noqa: E402
from lossguided.io import write_json  # noqa: E402
from lossguided.losstable import LossTable  # noqa: E402

SCRATCH_EPOCHS = 12  # from random weights: twice the pre-training's epochs, on about a third of its images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("setting", help="benchmark setting, e.g. confusion30")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", default="auto", help="whose final list to train from scratch (recipe_<variant>)")
    p.add_argument("--own-only", action="store_true", help="only train the recipe's own list from scratch")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--work", default="runs/bench-v2")
    p.add_argument("--results", default="benchmarks/results/recipe_v2")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = Bench("cpu-small", Path(args.work), Path(args.results))
    recipe = bench.recipe_row(args.setting, args.seed, args.variant)
    cfg = bench.cfg(args.setting, args.seed)
    splits = stages.load_splits(cfg.data)
    run = bench.dir(args.setting, f"recipe_{args.variant}", args.seed)
    table = LossTable.load(run / "record1" / "losses.npz")
    clean = np.flatnonzero(table.labels == table.true_labels)
    order = clean[np.lexsort((table.losses[clean], table.labels[clean]))]
    labels = table.labels[order]
    rank = np.arange(len(order)) - np.searchsorted(labels, labels)
    perfect = np.sort(table.ids[order[rank < 1000]])
    own = np.loadtxt(run / "refine2" / "selected.csv", delimiter=",", skiprows=1, usecols=0, dtype=np.int64)
    scratch = dataclasses.replace(
        cfg, finetune=dataclasses.replace(cfg.finetune, epochs=SCRATCH_EPOCHS, lr=cfg.pretrain.lr, patience=None)
    )
    rows = {"recipe": {k: recipe[k] for k in ("val_mean_top1_error", "test_mean_top1_error", "purity")}}
    for name, ids, run_cfg, start in (
        ("perfect detection, noisy start", perfect, cfg, run / "pretrain" / "best.pt"),
        ("perfect detection, from scratch", perfect, scratch, None),
        ("recipe's own list, from scratch", own, scratch, None),
    ):
        if args.own_only and "perfect" in name:
            continue
        out = (
            bench.work
            / args.setting
            / f"diagnosis-{args.variant}-s{args.seed}"
            / name.replace(" ", "_").replace(",", "")
        )
        sub = stages.Splits(splits.train.select_ids(ids), splits.val, None)
        stages.train(run_cfg, sub, out_dir=out, section="finetune", init_from=start)
        rows[name] = _evaluate(out / "best.pt", splits, cfg) | {"train_samples": int(len(ids))}
        logging.info("%s: %s", name, rows[name])
    name = f"seed{args.seed}" if args.variant == "auto" else f"{args.variant}-seed{args.seed}"
    path = bench.results / args.setting / "diagnosis" / f"{name}.json"  # not a table row
    write_json(path, {"setting": args.setting, "seed": args.seed, "variant": args.variant, "rows": rows})
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
