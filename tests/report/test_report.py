"""The HTML report without a browser: one self-contained file, what it embeds, worst classes first, suspects
highest-loss first beside the selection, notices for unfinished runs and missing images, size at scale."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np

from lossguided.cli import main
from lossguided.report.html import ReportOptions, build_report, class_samples, write_report
from lossguided.report.pagesize import measure_page_size


def embedded_data(page: str) -> dict:
    raw = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)[1]
    return json.loads(raw.replace("<\\/", "</"))


def test_report_is_one_self_contained_file(fake_run, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", str(fake_run["run"]), "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    page = out.read_text()
    assert printed["bytes"] == out.stat().st_size and printed["notices"] == []
    # nothing is fetched: every src is a data URI, no link/stylesheet/script file, no http(s) anywhere in markup
    assert re.findall(r'src="(?!data:)', page) == [] and "<link" not in page
    assert not re.search(r"(src|href)=[\"']?https?:", page)
    assert page.count('<script type="application/json"') == 1 and "</html>" in page
    # stages table (Table-2 style) and both figures are there
    assert "<th>stage</th>" in page and "<td>refine1</td>" in page
    assert 'id="curves"' in page and 'id="losses"' in page and "drop_quantile 0.1" in page
    data = embedded_data(page)
    table = fake_run["table"]
    assert data["names"] == list(table.classes.names)  # markup in names stays data, escaped by JSON in a script tag
    assert data["thumbs"] and all(re.fullmatch(r"[A-Za-z0-9+/=]+", t) for t in data["thumbs"])
    assert sum(data["sel"]) == len(fake_run["selected"]) and data["n"] == np.bincount(table.labels).tolist()


def test_worst_class_first_and_its_highest_loss_suspect_leads(fake_run):
    page, _ = build_report(fake_run["run"])
    data = embedded_data(page)
    table = fake_run["table"]
    worst_class = data["worst"][0]
    high = np.array(data["high"])
    assert high[worst_class] == high.max()
    # the planted wrong label with the highest loss is the first suspect of its (given) class
    pos = int(np.flatnonzero(table.ids == fake_run["worst_id"])[0])
    suspects, selected = data["detail"][str(int(table.labels[pos]))]
    assert suspects[0][0] == fake_run["worst_id"] and suspects[0][5] == 1
    assert [s[2] for s in suspects] == sorted((s[2] for s in suspects), reverse=True)
    # the selected side shows only samples of refine1/selected.csv, lowest loss first
    assert {s[0] for s in selected} <= set(fake_run["selected"].tolist())
    assert [s[2] for s in selected] == sorted(s[2] for s in selected)


def test_class_samples_limits_and_orders():
    from lossguided.data.manifest import ClassMap
    from lossguided.losstable import LossTable

    ids = np.arange(10)
    labels = np.array([0] * 6 + [1] * 4)
    losses = np.array([5, 1, 3, 2, 4, 0.5, 9, 8, 7, 6], dtype=np.float32)
    t = LossTable(ids, labels, losses, np.ones(10), labels, np.array([""] * 10, dtype=object), ClassMap(("a", "b")))
    out = class_samples(t, np.array([1, 3, 5, 9]), np.array([0]), k=2)
    top, sel = out[0]
    assert ids[top].tolist() == [0, 4] and ids[sel].tolist() == [5, 1] and set(out) == {0}
    top, sel = class_samples(t, np.array([0, 9]), np.array([0, 1]), k=3)[1]  # suspects leave out the selected
    assert ids[top].tolist() == [6, 7, 8] and ids[sel].tolist() == [9]


def test_interrupted_run_gives_a_page_that_says_what_is_missing(fake_run):
    run = fake_run["run"]
    (run / "metrics.json").unlink()
    (run / "refine1" / "done.json").unlink()
    (run / "record2").mkdir()  # a second round started and was killed before anything was written
    page, summary = build_report(run)
    text = " ".join(summary["notices"])
    assert "metrics.json missing" in text and "stage refine1 has no done.json" in text
    assert "stage record2 has no done.json" in text
    assert page.count('class="notice"') == len(summary["notices"])
    assert "<td>pretrain</td>" in page and "<td>refine1</td>" not in page  # only finished stages in the table

    (run / "record1" / "losses.npz").unlink()
    shutil.rmtree(run / "pretrain")
    page, summary = build_report(run)
    text = " ".join(summary["notices"])
    assert "record1/losses.npz missing" in text and "stage pretrain has not started" in text
    assert embedded_data(page)["names"] == []


def test_missing_images_become_placeholders_and_a_notice(fake_run):
    table = fake_run["table"]
    for p in table.paths[::3]:
        Path(p).unlink()
    page, summary = build_report(fake_run["run"])
    data = embedded_data(page)
    assert summary["missing_images"] > 0
    assert any("missing or unreadable" in n for n in summary["notices"])
    shown = [s for pair in data["detail"].values() for side in pair for s in side]
    missing_ids = set(table.ids[::3].tolist())
    assert all((s[4] == -1) == (s[0] in missing_ids) for s in shown)


def test_max_classes_and_thumbs_per_class_bound_the_page(fake_run, tmp_path):
    small = write_report(fake_run["run"], tmp_path / "a.html", ReportOptions(max_classes=2, thumbs_per_class=2))
    full = write_report(fake_run["run"], tmp_path / "b.html", ReportOptions(max_classes=None, thumbs_per_class=6))
    assert small["thumbnail_classes"] == 2 and small["thumbnails"] <= 2 * 4
    assert full["thumbnail_classes"] == 8 and small["bytes"] < full["bytes"]
    assert any("--max-classes" in n for n in small["notices"])


def test_measured_page_size_grows_with_thumbnails_not_with_classes_alone():
    a = measure_page_size(300, samples_per_class=8, options=ReportOptions(max_classes=20))
    b = measure_page_size(300, samples_per_class=8, options=ReportOptions(max_classes=40))
    assert a["thumbnail_classes"] == 20 and b["thumbnails"] > a["thumbnails"]
    assert 100 < a["bytes_per_thumbnail"] < 3000  # a 48 px JPEG in base64
    assert b["bytes"] - a["bytes"] < 1.5 * (b["thumbnail_bytes"] - a["thumbnail_bytes"]) + 20_000


def test_fashion_mnist_options_match_the_training_stack():
    """The report passes the saved config's data section (a dict); training passes the DataConfig: same data."""
    from lossguided.config import RecipeConfig, from_dict, to_dict
    from lossguided.data import fashion_mnist

    data = to_dict(RecipeConfig())["data"] | {"noise_rate": 0.3, "data_seed": 7, "train_limit": 50}
    opts = fashion_mnist.options_from(data)
    assert opts == fashion_mnist.options_from(from_dict({"data": data}).data)
    assert (opts.noise_rate, opts.seed, opts.train_limit) == (0.3, 7, 50)
    assert fashion_mnist.options_from({}) == fashion_mnist.options_from(None) == fashion_mnist.FashionMnistOptions()


def test_suspects_are_only_samples_above_the_drop_rule(fake_run):
    """A class with nothing above the drop rule shows no suspect (and a 0% high-loss share), however high its
    left-out losses rank; with 'auto' every suspect is above its own class's threshold."""
    import yaml

    from lossguided.refine.threshold import estimate_drop_threshold

    run, table = fake_run["run"], fake_run["table"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["refine"] |= {"drop_loss_above": 2.0, "drop_quantile": None}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    data = embedded_data(build_report(run)[0])
    suspects = {int(c): pair[0] for c, pair in data["detail"].items()}
    assert all(s[2] > 2.0 for side in suspects.values() for s in side)
    clean = [c for c in range(len(table.classes)) if table.losses[table.labels == c].max() <= 2.0]
    assert clean and all(suspects[c] == [] and data["high"][c] == 0 for c in clean)
    assert data["rule"]["loss"] == 2.0 and data["threshold"] is None

    config["refine"]["drop_loss_above"] = "auto"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    page, _ = build_report(run)
    data = embedded_data(page)
    per_class = estimate_drop_threshold(table.labels, table.losses, num_classes=len(table.classes)).per_class
    shown = [(int(c), s[2]) for c, pair in data["detail"].items() for s in pair[0]]
    assert shown and all(loss > per_class[c] for c, loss in shown)
    assert "a threshold per class" in page


def test_page_text_is_escaped_by_the_template(fake_run, tmp_path):
    run = fake_run["run"].rename(tmp_path / "run <i>x & co")
    page, _ = build_report(run)
    assert "<i>" not in page and "run &lt;i&gt;x &amp; co" in page
    assert page.count("<script>") == 1 and "JSON.parse" in page and "table.stages" in page  # script and CSS inlined


def test_the_drop_rule_drops_disagreeing_samples_first_as_the_selection_does():
    from lossguided.data.manifest import ClassMap
    from lossguided.losstable import LossTable
    from lossguided.refine.apply import drop_decision

    labels = np.repeat([0, 1], 50)
    losses = np.r_[np.linspace(0.01, 0.5, 50), np.linspace(0.01, 0.5, 50)]
    preds = labels.copy()
    preds[[8, 60]] = 1 - labels[[8, 60]]  # low losses (not among the 5 lowest), yet assigned to another class
    table = LossTable(np.arange(100), labels, losses, np.ones(100), preds, ["x"] * 100, ClassMap(("a", "b")))
    rule = drop_decision(table, drop_loss_above=1.0, drop_disagreeing=True)
    assert np.flatnonzero(losses > rule.limit).tolist() == [8, 60] == np.flatnonzero(rule.dropped).tolist()
    without = drop_decision(table, drop_loss_above=1.0)
    assert not (losses > without.limit).any()


def test_the_report_shows_the_last_recorded_round_by_default(tmp_path):
    from lossguided.data.manifest import ClassMap
    from lossguided.losstable import LossTable
    from lossguided.report.rundir import read_run

    n = 10
    table = LossTable(
        np.arange(n), np.arange(n) % 2, np.linspace(0, 1, n), np.ones(n), np.zeros(n), ["x"] * n, ClassMap(("a", "b"))
    )
    for r in (1, 2):
        (tmp_path / f"record{r}").mkdir()
        table.save(tmp_path / f"record{r}" / "losses.npz")
    assert read_run(tmp_path).round == 2
    assert read_run(tmp_path, round=1).round == 1
