"""`lossguided suspects` ranks the injected wrong labels first; `lossguided relabel` applies a person's corrections
(relabel, DROP, keep) and writes a manifest `--train` reads; bad corrections name the file and row."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from lossguided.cli import main
from lossguided.data.manifest import ClassMap, DataError, read_csv
from lossguided.data.sources import load_manifest
from lossguided.losstable import LossTable
from lossguided.report.suspects import rank_in_class, rank_suspects, relabel_manifest


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_highest_loss_wrong_label_ranks_first(fake_run, tmp_path, capsys):
    out = tmp_path / "suspects.csv"
    assert main(["suspects", str(fake_run["run"] / "record1" / "losses.npz"), "--out", str(out)]) == 0
    rows = read_rows(out)
    table = fake_run["table"]
    assert len(rows) == len(table) and int(rows[0]["id"]) == fake_run["worst_id"]
    assert rows[0]["rank"] == "1" and rows[0]["rank_in_class"] == "1" and rows[0]["corrected_label"] == ""
    assert rows[0]["label"] != rows[0]["true_label"]  # the planted wrong label
    losses = [float(r["loss"]) for r in rows]
    assert losses == sorted(losses, reverse=True)
    # every planted wrong label (loss >= 3) comes before every correct one (loss <= 1)
    n_noisy = len(fake_run["noisy_pos"])
    assert all(r["label"] != r["true_label"] for r in rows[:n_noisy])
    assert list(rows[0]) == [
        "rank",
        "id",
        "path",
        "label",
        "predicted",
        "loss",
        "rank_in_class",
        "class_size",
        "true_label",
        "corrected_label",
    ]


def test_top_and_per_class_limits(fake_run, tmp_path):
    losses = fake_run["run"] / "record1" / "losses.npz"
    out = tmp_path / "s.csv"
    assert main(["suspects", str(losses), "--out", str(out), "--per-class", "2", "--top", "5"]) == 0
    rows = read_rows(out)
    assert len(rows) == 5 and all(int(r["rank_in_class"]) <= 2 for r in rows)
    assert main(["suspects", str(losses), "--out", str(out), "--per-class", "1"]) == 0
    assert sorted(r["label"] for r in read_rows(out)) == sorted(fake_run["table"].classes.names)
    with pytest.raises(SystemExit):
        main(["suspects", str(losses), "--out", str(out), "--top", "0"])


def test_rank_in_class_ties_by_id():
    ids = np.array([7, 3, 5, 1])
    ranks = rank_in_class(ids, np.array([0, 0, 1, 0]), np.array([2.0, 2.0, 1.0, 9.0]))
    assert ranks.tolist() == [3, 2, 1, 1]
    pos, _ = rank_suspects(ids, np.array([0, 0, 1, 0]), np.array([2.0, 2.0, 1.0, 9.0]), top=3)
    assert ids[pos].tolist() == [1, 3, 7]


@pytest.fixture
def manifest_and_suspects(image_csv, tmp_path):
    """The shared 24-image CSV, a loss table over it, and its suspects CSV."""
    m = read_csv(image_csv)
    rng = np.random.default_rng(0)
    losses = rng.uniform(0, 1, len(m)).astype(np.float32)
    losses[5] = 8.0
    table = LossTable(m.ids, m.labels, losses, np.ones(len(m)), m.labels, m.paths, m.classes)
    table.save(tmp_path / "losses.npz")
    sus = tmp_path / "suspects.csv"
    assert main(["suspects", str(tmp_path / "losses.npz"), "--out", str(sus)]) == 0
    return m, sus


def test_relabel_applies_drop_relabel_and_keep(manifest_and_suspects, image_csv, tmp_path, capsys):
    m, sus = manifest_and_suspects
    rows = read_rows(sus)
    assert rows[0]["id"] == "5"
    rows[0]["corrected_label"] = "DROP"
    other = next(c for c in m.classes.names if c != rows[1]["label"])
    rows[1]["corrected_label"] = other
    rows[2]["corrected_label"] = "  "  # blank: keep
    write_rows(sus, rows)
    capsys.readouterr()
    new = tmp_path / "new.csv"
    assert main(["relabel", str(image_csv), "--corrections", str(sus), "--out", str(new)]) == 0
    assert '"dropped": 1' in capsys.readouterr().out
    out = load_manifest(str(new))  # what --train does with it
    names = np.array(out.classes.names)
    assert len(out) == len(m) - 1 and 5 not in out.ids
    got = dict(zip(out.ids.tolist(), names[out.labels], strict=True))
    assert got[int(rows[1]["id"])] == other and got[int(rows[2]["id"])] == rows[2]["label"]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in out.paths)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r[3].update(corrected_label="SKU-TYPO"), r"suspects\.csv: row 5: corrected_label 'SKU-TYPO' is not"),
        (lambda r: r[1].update(id="999"), r"suspects\.csv: row 3: id 999 is not in"),
        (lambda r: r[2].update(id="x1"), r"suspects\.csv: row 4: id 'x1' is not an integer"),
        (lambda r: r[4].update(id=r[0]["id"]), r"suspects\.csv: row 6: id 5 again \(first on row 2\)"),
        (lambda r: r[0].update(label="SKU-Z"), r"suspects\.csv: row 2: id 5 has label .* not 'SKU-Z'"),
        (  # the manifest's rows were reordered since: the id now names another image
            lambda r: r[1].update(path=r[2]["path"]),
            r"suspects\.csv: row 3: id \d+ is .*\.(png|jpg) in .*, not .*: corrections made for another manifest",
        ),
    ],
)
def test_bad_corrections_name_file_and_row(manifest_and_suspects, tmp_path, edit, message):
    m, sus = manifest_and_suspects
    rows = read_rows(sus)
    edit(rows)
    write_rows(sus, rows)
    with pytest.raises(DataError, match=message):
        relabel_manifest(m, sus, tmp_path / "new.csv")
    assert not (tmp_path / "new.csv").exists()


def test_new_labels_need_the_flag_and_missing_columns_are_named(manifest_and_suspects, tmp_path):
    m, sus = manifest_and_suspects
    rows = read_rows(sus)
    rows[0]["corrected_label"] = "SKU-NEW"
    write_rows(sus, rows)
    summary = relabel_manifest(m, sus, tmp_path / "new.csv", allow_new_labels=True)
    assert summary["new_classes"] == ["SKU-NEW"] and summary["relabelled"] == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\n1,SKU-A\n")
    with pytest.raises(DataError, match=r"bad\.csv: row 1: missing column\(s\) \['corrected_label'\]"):
        relabel_manifest(m, bad, tmp_path / "new.csv")


def test_in_memory_images_are_written_so_train_can_read_them(tmp_path):
    from lossguided.data.manifest import Manifest
    from lossguided.data.storage import Storage

    images = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    m = Manifest(
        ids=np.array([4, 8, 9]),
        labels=np.array([0, 1, 1]),
        classes=ClassMap(("a", "b")),
        source="mem:train",
        storage=Storage.arrays(images),
    )
    corr = tmp_path / "c.csv"
    corr.write_text("id,corrected_label\n8,a\n9,DROP\n")
    relabel_manifest(m, corr, tmp_path / "new.csv")
    out = read_csv(tmp_path / "new.csv")
    assert out.ids.tolist() == [4, 8] and list(np.array(out.classes.names)[out.labels]) == ["a", "a"]
    assert all(Path(p).parent.name == "new_images" for p in out.paths)
