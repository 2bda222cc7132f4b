"""`run` reuses a finished stage only for the data it was computed from, and a start that fails on bad data leaves
the folder reusable."""

from lossguided.cli import main


def _args(train, out):
    return [
        "run",
        "cpu-small",
        "--train",
        str(train),
        "--val",
        str(train),
        "--out",
        str(out),
        "--model",
        "test_resnet",
        "--image-size",
        "16",
        "--workers",
        "0",
        "--set",
        "pretrain.epochs=1",
        "--set",
        "finetune.epochs=1",
        "--set",
        "refine.rounds=1",
        "--set",
        "refine.bands=[1-5]",
        "--set",
        "refine.drop_loss_above=null",
        "--set",
        "ensemble.tta=none",
    ]


def test_edited_labels_stop_the_rerun_naming_the_split(tmp_path, image_csv, capsys):
    out = tmp_path / "run"
    assert main(_args(image_csv, out)) == 0
    rows = image_csv.read_text().splitlines()
    rows[1] = rows[1].replace("SKU-B", "SKU-A")  # the same path, another label
    rows[2] = rows[2].replace("SKU-A", "SKU-B")
    image_csv.write_text("\n".join(rows) + "\n")  # the same file, edited
    capsys.readouterr()
    assert main(_args(image_csv, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a run on other data: the train split's ids or labels changed" in err[0]


def test_a_start_that_fails_on_bad_data_leaves_the_folder_reusable(tmp_path, image_csv, capsys):
    out = tmp_path / "run"
    bad = tmp_path / "bad.csv"
    bad.write_text(image_csv.read_text() + "img/missing.png,SKU-A\n")
    assert main(_args(bad, out)) == 2
    assert "missing.png" in capsys.readouterr().err
    assert not (out / "config.yaml").exists()
    assert main([*_args(image_csv, out)[:-2], "--set", "ensemble.tta=hflip"]) == 0  # other settings: not pinned
