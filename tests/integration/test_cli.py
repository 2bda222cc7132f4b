"""The CLI end to end on CPU with a tiny model: files produced, metrics printed, resume, clean errors."""

import json

import numpy as np
import pytest

from lossguided.cli import main
from lossguided.config import ConfigError
from lossguided.losstable import LossTable
from lossguided.refine.threshold import confident_other_mask

TINY = ["--model", "test_resnet", "--no-pretrained", "--image-size", "16", "--batch-size", "8", "--lr", "1e-3"]


def test_train_losses_select_evaluate_on_image_files(tmp_path, image_csv, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--train",
                str(image_csv),
                "--val",
                str(image_csv),
                "--out",
                str(out),
                "--epochs",
                "2",
                "--workers",
                "0",
                *TINY,
            ]
        )
        == 0
    )
    assert {"last.pt", "best.pt", "metrics.jsonl", "config.yaml"} <= {p.name for p in out.iterdir()}
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()

    assert main(["train", "--train", str(image_csv), "--out", str(out), "--epochs", "2", *TINY]) == 0
    assert json.loads(capsys.readouterr().out)["resumed_from_epoch"] == 2

    table_path = tmp_path / "losses.npz"
    assert (
        main(
            [
                "losses",
                "--checkpoint",
                str(out / "best.pt"),
                "--train",
                str(image_csv),
                "--out",
                str(table_path),
                "--epochs",
                "2",
            ]
        )
        == 0
    )
    table = LossTable.load(table_path)
    assert sorted(table.ids.tolist()) == list(range(24)) and np.all(table.n_records == 2)
    assert table.classes.names == ("SKU-A", "SKU-B", "SKU-C")
    capsys.readouterr()

    sel = tmp_path / "clean.csv"
    assert (
        main(["select", str(table_path), "--bands", "1-2", "median", "--drop-loss-above", "100", "--out", str(sel)])
        == 0
    )
    lines = sel.read_text().splitlines()
    assert lines[0] == "id,path,label" and len(lines) - 1 == 3 * 6  # per class of 8: ranks 1-2 and 2-6
    summary = sel.with_suffix(".summary.csv").read_text().splitlines()
    assert summary[0] == "class,available,selected" and len(summary) == 4
    capsys.readouterr()

    agree = tmp_path / "agree.csv"
    argv = ["select", str(table_path), "--bands", "1-8", "--drop-loss-above", "100", "--drop-disagreeing"]
    assert main([*argv, "--out", str(agree)]) == 0
    dropped = json.loads(capsys.readouterr().out)["dropped_first"]
    assert dropped == int((table.preds != table.labels).sum() - _kept_anyway(table))
    assert len(agree.read_text().splitlines()) - 1 == 24 - dropped

    confident = tmp_path / "confident.csv"
    argv = ["select", str(table_path), "--bands", "1-8", "--drop-loss-above", "100", "--drop-confident-other"]
    assert main([*argv, "--out", str(confident)]) == 0
    dropped = json.loads(capsys.readouterr().out)["dropped_first"]
    expected = confident_other_mask(
        table.labels, table.losses, table.p_label, table.top_classes, table.top_probs, num_classes=3, min_keep=5
    )
    assert dropped == int(expected.sum())
    assert len(confident.read_text().splitlines()) - 1 == 24 - dropped

    assert main(["evaluate", "--checkpoint", str(out / "best.pt"), "--test", str(image_csv)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"mean_top1_error", "top1_error", "per_class_error"} <= set(metrics)
    assert set(metrics["per_class_error"]) == {"SKU-A", "SKU-B", "SKU-C"}

    # features + ensemble: one model without TTA reproduces `evaluate` exactly; hflip views are summed
    ckpt = str(out / "best.pt")
    assert (
        main(
            [
                "features",
                "--checkpoint",
                ckpt,
                "--data",
                str(image_csv),
                "--out",
                str(tmp_path / "f0"),
                "--tta",
                "none",
                "--dtype",
                "float32",
            ]
        )
        == 0
    )
    assert main(["features", "--checkpoint", ckpt, "--data", str(image_csv), "--out", str(tmp_path / "f1")]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["n_views"] == 2
    assert (
        main(["ensemble", str(tmp_path / "f0"), "--out", str(tmp_path / "p.csv"), "--test", str(image_csv), "--exact"])
        == 0
    )
    single = json.loads(capsys.readouterr().out)
    assert single["mean_top1_error"] == metrics["mean_top1_error"]
    assert single["per_class_error"] == metrics["per_class_error"]
    assert (
        main(
            ["ensemble", str(tmp_path / "f0"), str(tmp_path / "f1"), "--out", str(tmp_path / "p2.csv"), "--top-k", "2"]
        )
        == 0
    )
    rows = (tmp_path / "p2.csv").read_text().splitlines()
    assert rows[0] == "id,prediction,top2" and len(rows) == 25
    assert rows[1].split(",")[1] in {"SKU-A", "SKU-B", "SKU-C"}
    capsys.readouterr()
    assert main(["ensemble", str(tmp_path / "f0"), "--out", str(tmp_path / "p3.csv"), "--top-k", "4"]) == 2
    assert "top-k 4 is not in [1, 3]" in capsys.readouterr().err
    assert (
        main(
            ["features", "--checkpoint", ckpt, "--data", str(image_csv), "--out", str(tmp_path / "f1"), "--tta", "none"]
        )
        == 2
    )  # a finished folder of other settings is not handed back
    assert "holds finished features with tta='hflip' (asked 'none')" in capsys.readouterr().err
    assert (
        main(
            [
                "features",
                "--checkpoint",
                ckpt,
                "--data",
                str(image_csv),
                "--out",
                str(tmp_path / "f1"),
                "--image-size",
                "20",
            ]
        )
        == 2
    )
    assert "image_size=16 (asked 20)" in capsys.readouterr().err


def test_bad_manifest_is_one_line_before_training(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("picture,label\nx.jpg,1\n")  # neither path nor one of its aliases
    assert main(["train", "--train", str(bad), "--out", str(tmp_path / "o"), *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.csv: row 1: missing column" in err[0]
    assert not (tmp_path / "o" / "last.pt").exists()


def test_unreachable_imagenet_weights_are_one_line(tmp_path, image_csv, capsys, monkeypatch):
    import lossguided.stages

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(lossguided.stages, "create_model", offline)
    args = [a for a in TINY if a != "--no-pretrained"]
    assert main(["train", "--train", str(image_csv), "--out", str(tmp_path / "o"), "--workers", "0", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass --pretrained-path FILE or --no-pretrained" in err[0]


def test_a_folder_is_resumed_only_by_the_same_run(tmp_path, image_csv, capsys):
    out, base = tmp_path / "run", ["train", "--train", str(image_csv), "--workers", "0", "--epochs", "1", *TINY]
    assert main([*base, "--out", str(out)]) == 0
    assert main([*base, "--out", str(out), "--lr", "5e-4"]) == 2  # other settings: refuse to mix two runs
    assert "holds a run with other training settings" in capsys.readouterr().err
    assert main([*base, "--out", str(out), "--lr", "5e-4", "--no-resume"]) == 0
    assert main([*base, "--out", str(tmp_path / "b")]) == 0
    table, record = str(tmp_path / "l.npz"), ["losses", "--train", str(image_csv), "--out"]
    assert main([*record, table, "--checkpoint", str(out / "last.pt")]) == 0
    assert not (tmp_path / "l_record").exists()  # the work folder goes once the table is written
    assert main([*record, table, "--checkpoint", str(out / "last.pt"), "--keep-work"]) == 0
    assert (tmp_path / "l_record" / "last.pt").is_file()
    assert main([*record, table, "--checkpoint", str(tmp_path / "b" / "last.pt")]) == 2  # not the old recording
    assert "holds a run with other starting checkpoint" in capsys.readouterr().err
    assert main([*record, table, "--checkpoint", str(tmp_path / "b" / "last.pt"), "--no-resume"]) == 0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model", "no_such_net"], "unknown timm model 'no_such_net'"),
        (["--model", "resnet10"], "unknown timm model 'resnet10': did you mean 'resnet10t'"),
        (["--patience", "0"], "pretrain: patience must be >= 1"),
        (["--lr", "inf"], "pretrain: lr must be a finite number > 0"),
        (["--workers", "-1"], "data.workers must be >= 0"),
        (["--optimizer", "no_such_opt"], "optimizer 'no_such_opt'"),
        (["--smoothing", "0.9"], "label smoothing eps must be in [0, (K-1)/K = 0.667] for K=3 classes"),
        (["--smoothing", "1.5"], "smoothing must be in [0, 1), got 1.5"),
        (["--set", "refine.bands=[6-10x]"], "refine.bands: invalid band '6-10x'"),
        (["--set", "record.epochs=0"], "record: epochs and batch_size must be >= 1"),
    ],
)
def test_bad_settings_are_one_line_before_training(tmp_path, image_csv, capsys, flags, message):
    out = tmp_path / "o"
    assert main(["train", "--train", str(image_csv), "--out", str(out), "--workers", "0", *TINY, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (out / "last.pt").exists()


def test_checkpoint_from_another_class_map_is_refused(tmp_path, image_csv, capsys):
    out = tmp_path / "run"
    assert main(["train", "--train", str(image_csv), "--out", str(out), "--epochs", "1", *TINY]) == 0
    other = tmp_path / "other.csv"
    other.write_text(image_csv.read_text().replace("SKU-C", "SKU-Q"))
    capsys.readouterr()
    assert (
        main(["losses", "--checkpoint", str(out / "last.pt"), "--train", str(other), "--out", str(tmp_path / "l.npz")])
        == 2
    )
    assert "label 'SKU-Q' is not in the class map" in capsys.readouterr().err


def test_bad_loss_table_and_band(tmp_path, capsys):
    from lossguided.io import write_npz

    path = tmp_path / "l.npz"
    write_npz(
        path,
        id=np.arange(3),
        label=np.zeros(3, int),
        loss=np.array([0.1, np.nan, 0.2], np.float32),
        n_records=np.ones(3, int),
        pred=np.zeros(3, int),
        path=np.array(["a", "b", "c"]),
        classes=np.array(["x"]),
    )
    assert main(["select", str(path), "--out", str(tmp_path / "s.csv")]) == 2
    assert "1 non-finite losses (NaN or inf), first at id 1" in capsys.readouterr().err
    write_npz(
        path,
        id=np.array([3, 1, 2]),
        label=np.zeros(3, int),
        loss=np.ones(3, np.float32),
        n_records=np.ones(3, int),
        pred=np.zeros(3, int),
        path=np.array(["a", "b", "c"]),
        classes=np.array(["x"]),
    )
    assert main(["select", str(path), "--out", str(tmp_path / "s.csv")]) == 2
    assert "ids must be unique and ascending; id 1 follows 3" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.fashion_mnist
def test_recipe_runs_every_stage_and_resumes(tmp_path, capsys):
    args = [
        "run",
        "cpu-small",
        "--out",
        str(tmp_path / "r"),
        "--train-limit",
        "300",
        "--model",
        "test_resnet",
        "--image-size",
        "16",
        "--set",
        "pretrain.epochs=1",
        "--set",
        "finetune.epochs=1",
        "--set",
        "refine.bands=[1-5]",
        "--set",
        "refine.drop_loss_above=null",
        "--set",
        "ensemble.seeds=[1]",
        "--set",
        "refine.rounds=2",
    ]
    assert main(args) == 0
    table = capsys.readouterr().out
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    names = [s["name"] for s in metrics["stages"]]
    ens = metrics["stages"][-1]  # cpu-small picks the views on val
    by_tta = ens["val_mean_top1_error_by_tta"]
    assert set(by_tta) == {"none", "hflip"} and ens["val_mean_top1_error"] == by_tta[ens["tta_used"]] == min(
        by_tta.values()
    )
    assert names[:3] == ["pretrain", "refine1", "refine2"] and names[3].startswith("logit-adjusted (tau ")
    assert names[4:] == [f"ensemble (2 models, {ens['tta_used']} TTA chosen on val)"]
    assert ens["models"] == ["refine2/best.pt", "ensemble/seed1/best.pt"]
    assert metrics["stages"][1]["train_samples"] == 50 and 0 <= metrics["stages"][1]["purity"] <= 1
    assert all(0 <= s["test_mean_top1_error"] <= 1 for s in metrics["stages"])
    assert "| refine2 |" in table and f"| {names[-1]} |" in table
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("*.pt")}
    assert main(args) == 0  # every stage done: nothing retrained
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("*.pt")}
    capsys.readouterr()
    assert main(["run", "nope-recipe", "--out", str(tmp_path / "x")]) == 2
    assert (
        "recipe 'nope-recipe' not found; shipped recipes: ['cpu-pretrained', 'cpu-small', 'demo', 'paper']"
        in capsys.readouterr().err
    )
    assert main([*args[:-2], "--set", "refine.bandz=[1-5]"]) == 2
    assert "unknown key 'refine.bandz' (did you mean 'bands'?)" in capsys.readouterr().err
    assert main([*args[:-2], "--set", "refine.rounds=3"]) == 2  # same folder, other settings: refuse to mix
    assert "holds a run with other settings (refine.rounds 2 -> 3)" in capsys.readouterr().err


def test_unreachable_hub_is_one_line_within_two_seconds(tmp_path, image_csv, capsys, monkeypatch):
    import socket
    import time

    from huggingface_hub import constants

    from lossguided import models

    silent = socket.socket()  # a hub that takes the connection and never answers (a network that drops packets)
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    host = f"127.0.0.1:{silent.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", f"http://{host}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))  # nothing cached
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    models._unreachable_host.cache_clear()
    try:
        start = time.perf_counter()
        with pytest.raises(ConfigError) as e:
            models.create_model("resnet10t", num_classes=3, pretrained=True)
        assert time.perf_counter() - start < 2.5  # the probe (1.5 s), then the offline cache lookup
        assert f"not in the local cache and the hub ({host}) cannot be reached" in str(e.value)
        assert constants.HF_HUB_OFFLINE is False  # the hub's mode is left as it was
        capsys.readouterr()
        args = [
            "train",
            "--train",
            str(image_csv),
            "--out",
            str(tmp_path / "o"),
            "--model",
            "resnet10t",
            "--pretrained",
            "--image-size",
            "16",
            "--workers",
            "0",
        ]
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--pretrained-path FILE or --no-pretrained" in err[0]
    finally:
        models._unreachable_host.cache_clear()
        silent.close()


def test_evaluate_with_progress_batch_size_workers_and_predictions(tmp_path, image_csv, capsys):
    out = tmp_path / "run"
    assert main(["train", "--train", str(image_csv), "--out", str(out), "--epochs", "1", "--workers", "0", *TINY]) == 0
    capsys.readouterr()
    preds = tmp_path / "preds.csv"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(out / "best.pt"),
                "--test",
                str(image_csv),
                "--batch-size",
                "5",
                "--workers",
                "0",
                "--predictions",
                str(preds),
                "--top-k",
                "2",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)
    assert "evaluate" in captured.err and "24/24" in captured.err  # the progress bar
    rows = preds.read_text().splitlines()
    assert rows[0] == "id,prediction,top2,prob,prob2" and len(rows) == 25
    first = rows[1].split(",")
    assert first[1] in {"SKU-A", "SKU-B", "SKU-C"} and first[2] != first[1] and float(first[3]) >= float(first[4])
    wrong = sum(r.split(",")[1] != lab for r, lab in zip(rows[1:], ["SKU-B", "SKU-A", "SKU-C"] * 8, strict=True))
    assert metrics["top1_error"] == pytest.approx(wrong / 24)


def _kept_anyway(table: LossTable) -> int:
    """Disagreeing samples among each class's 5 lowest losses (kept so that no class is emptied)."""
    kept = 0
    for c in np.unique(table.labels):
        rows = np.flatnonzero(table.labels == c)
        low = rows[np.argsort(table.losses[rows], kind="stable")[:5]]
        kept += int((table.preds[low] != c).sum())
    return kept
