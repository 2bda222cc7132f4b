"""Feature store and streaming ensemble top-k: against a naive full-logits float64 computation, fast against exact on
near-tied classes, resumable writing, and the error for each kind of bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lossguided.ensemble import FeatureWriter, check_compatible, ensemble_topk, open_features
from lossguided.ensemble import store as store_module


def random_models(seed: int, n_rows: int, n_classes: int, dims=(24, 40, 16), views=(1, 2, 3)):
    rng = np.random.default_rng(seed)
    models = []
    for dim, n_views in zip(dims, views, strict=True):
        feats = (n_views * rng.random((n_rows, dim))).astype(np.float16)  # summed post-ReLU views
        weight = (rng.standard_normal((n_classes, dim)) / np.sqrt(dim)).astype(np.float32)
        bias = (0.1 * rng.standard_normal(n_classes)).astype(np.float32)
        models.append((feats, weight, bias, n_views))
    return models


def naive_logits(models) -> np.ndarray:
    """All N x K ensemble logits in float64: sum over models of F @ W.T / n_views + b."""
    return sum(f.astype(np.float64) @ w.astype(np.float64).T / n + b.astype(np.float64) for f, w, b, n in models)


def naive_topk(models, k: int) -> tuple[np.ndarray, np.ndarray]:
    logits = naive_logits(models)
    classes = np.broadcast_to(np.arange(logits.shape[1]), logits.shape)
    order = np.lexsort((classes, -logits), axis=-1)[:, :k]  # score descending, ties to the lower class
    return order, np.take_along_axis(logits, order, 1)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize(
    ("seed", "k", "chunk_rows", "tile_classes"),
    [(0, 1, 64, 128), (1, 5, 37, 100), (2, 3, 1000, 4096), (3, 1, 1, 7)],
)
def test_streamed_topk_matches_naive_full_logits(seed, k, chunk_rows, tile_classes, fast):
    n_rows = 25 if chunk_rows == 1 else 203  # chunk sizes that do not divide N, tiles that do not divide K
    models = random_models(seed, n_rows, 509)
    idx, scores = ensemble_topk(models, k=k, chunk_rows=chunk_rows, tile_classes=tile_classes, fast=fast)
    want_idx, want_scores = naive_topk(models, k)
    assert idx.dtype == torch.int64 and scores.dtype == torch.float32
    assert idx.shape == scores.shape == (n_rows, k)
    np.testing.assert_array_equal(idx.numpy(), want_idx)
    np.testing.assert_allclose(scores.numpy(), want_scores, rtol=1e-6, atol=1e-6)


def test_reduced_matmul_precision_is_overridden_and_restored():
    models = random_models(6, 120, 300)
    want_idx, _ = naive_topk(models, 2)
    torch.set_float32_matmul_precision("medium")  # lets float32 matmuls run in bf16 on CPUs too
    try:
        for fast in (False, True):
            idx, _ = ensemble_topk(models, k=2, fast=fast)
            np.testing.assert_array_equal(idx.numpy(), want_idx)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision("highest")


def test_fast_equals_exact_and_does_not_depend_on_chunking():
    models = random_models(4, 150, 700)
    ref_idx, ref_scores = ensemble_topk(models, k=4)
    for chunk_rows, tile_classes in [(150, 700), (16, 64), (49, 333)]:
        for fast in (False, True):
            idx, scores = ensemble_topk(models, k=4, chunk_rows=chunk_rows, tile_classes=tile_classes, fast=fast)
            assert torch.equal(idx, ref_idx) and torch.equal(scores, ref_scores)


def near_tied_models(seed: int, n_rows: int = 160, n_classes: int = 300, dim: int = 64):
    """Each row's best classes are 8 copies of one weight vector perturbed far below bfloat16 resolution, so the
    bf16 scores cannot order them; two more classes are exact duplicates (same weight and bias)."""
    rng = np.random.default_rng(seed)
    models = []
    base = rng.standard_normal(dim)
    for n_views in (1, 2):
        weight = rng.standard_normal((n_classes, dim)) / np.sqrt(dim)
        for j, c in enumerate(range(10, 18)):
            weight[c] = base + 2.0 ** -(12 + j % 2) * rng.standard_normal(dim)
        weight[40] = weight[25] = base * (1 - 2.0**-30)  # exact duplicates: the lower index must win
        feats = n_views * (base + rng.standard_normal((n_rows, dim)))
        bias = np.zeros(n_classes)
        bias[10:18] = 2.0**-20 * rng.standard_normal(8)
        models.append((feats.astype(np.float16), weight.astype(np.float32), bias.astype(np.float32), n_views))
    return models


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_top1_equals_fp32_on_near_ties(seed):
    models = near_tied_models(seed)
    exact_idx, exact_scores = ensemble_topk(models, k=3, chunk_rows=50, tile_classes=64)
    fast_idx, fast_scores = ensemble_topk(models, k=3, chunk_rows=50, tile_classes=64, fast=True)
    assert torch.equal(fast_idx, exact_idx) and torch.equal(fast_scores, exact_scores)
    want_idx, _ = naive_topk(models, 3)
    np.testing.assert_array_equal(exact_idx[:, 0].numpy(), want_idx[:, 0])
    # the case is adversarial: scores rounded through bfloat16 pick another class for many rows
    bf16 = sum(
        torch.from_numpy(f).bfloat16().float() @ torch.from_numpy(w).bfloat16().float().T / n for f, w, _, n in models
    )
    assert (bf16.bfloat16().float().argmax(1) != exact_idx[:, 0]).float().mean() > 0.2
    assert len(set(exact_idx[:, 0].tolist())) > 1
    # keeping a single class per tile forces the float32 recomputation of the rows whose near-ties spill over
    for fast in (False, True):
        idx, scores = ensemble_topk(models, k=1, tile_classes=64, candidates=1, fast=fast)
        assert torch.equal(idx, exact_idx[:, :1]) and torch.equal(scores, exact_scores[:, :1])


def test_exact_ties_go_to_the_lower_class():
    rng = np.random.default_rng(5)
    dim, n_classes = 16, 50
    weight = rng.standard_normal((n_classes, dim)).astype(np.float32)
    weight[[9, 3, 31]] = 5 * rng.standard_normal(dim).astype(np.float32)  # three identical best classes
    feats = np.tile(weight[3].astype(np.float16), (7, 1))
    bias = np.zeros(n_classes, np.float32)
    for fast in (False, True):
        idx, scores = ensemble_topk([(feats, weight, bias, 1)], k=4, fast=fast, tile_classes=8)
        assert idx[:, :3].tolist() == [[3, 9, 31]] * 7
        assert torch.equal(scores[:, 0], scores[:, 2])
        # all-zero features and bias: every class ties
        idx, scores = ensemble_topk([(feats * 0, weight, bias, 1)], k=4, fast=fast, tile_classes=8)
        assert idx.tolist() == [[0, 1, 2, 3]] * 7 and not scores.any()


def test_summed_view_features_give_summed_view_logits():
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 100)
    views = torch.randn(3, 40, 32)  # 3 views (e.g. original, flip, crop) of 40 images
    with torch.no_grad():
        summed_logits = sum(head(v) for v in views)
        from_features = views.sum(0) @ head.weight.T + 3 * head.bias
    torch.testing.assert_close(from_features, summed_logits, rtol=1e-5, atol=1e-5)
    weight, bias = head.weight.detach().numpy(), head.bias.detach().numpy()
    idx, _ = ensemble_topk([(views.sum(0).numpy(), weight, bias, 3)], k=5)  # stored features are view sums
    assert torch.equal(idx, torch.topk(summed_logits, 5, dim=1).indices)


def write_dir(path: Path, feats, ids, weight, bias, classes, *, chunk: int = 4, **kw):
    writer = FeatureWriter.create(path, n_rows=len(feats), weight=weight, bias=bias, classes=classes, **kw)
    for start in range(writer.rows_done, len(feats), chunk):
        writer.write_chunk(start, feats[start : start + chunk], ids[start : start + chunk])
    return writer.finish()


def small_store(tmp_path: Path, name: str = "m0", seed: int = 0, n_rows: int = 10, classes=None, ids=None, **kw):
    rng = np.random.default_rng(seed)
    classes = classes or [f"c{i}" for i in range(6)]
    weight = rng.standard_normal((len(classes), 8)).astype(np.float32)
    bias = rng.standard_normal(len(classes)).astype(np.float32)
    feats = rng.random((n_rows, 8)).astype(np.float32)
    ids = np.arange(100, 100 + n_rows) if ids is None else ids
    return write_dir(tmp_path / name, feats, ids, weight, bias, classes, **kw), feats


def test_feature_store_round_trip_and_ensemble(tmp_path):
    fs, feats = small_store(tmp_path, n_views=2, tta="flip", model="toy", dtype="float32")
    assert fs.features.dtype == np.float32 and fs.features.shape == (10, 8)
    np.testing.assert_array_equal(fs.features, feats)
    np.testing.assert_array_equal(fs.ids, np.arange(100, 110))
    assert fs.n_views == 2 and fs.meta["tta"] == "flip" and fs.meta["complete"] and fs.classes[1] == "c1"
    other, _ = small_store(tmp_path, "m1", seed=1)  # float16 by default
    assert other.features.dtype == np.float16
    check_compatible([fs, other])
    idx, _ = ensemble_topk([fs, other], k=2)
    models = [(np.asarray(s.features), s.weight, s.bias, s.n_views) for s in (fs, other)]
    np.testing.assert_array_equal(idx.numpy(), naive_topk(models, 2)[0])


def test_writer_resumes_after_an_interruption(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    feats = rng.random((11, 8)).astype(np.float16)
    ids = rng.permutation(1000)[:11]
    weight, bias = rng.standard_normal((5, 8)).astype(np.float32), np.zeros(5, np.float32)
    classes = list("abcde")
    opts = {"n_rows": 11, "weight": weight, "bias": bias, "classes": classes, "chunk_rows": 4}
    writer = FeatureWriter.create(tmp_path / "m", **opts)
    writer.write_chunk(0, feats[:4], ids[:4])
    writer.write_chunk(4, feats[4:8], ids[4:8])

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store_module, "_write_meta", killed)  # dies after the rows, before meta.json records them
    with pytest.raises(KeyboardInterrupt):
        writer.write_chunk(8, feats[8:] + 1, ids[8:])
    monkeypatch.undo()
    assert json.loads((tmp_path / "m" / "meta.json").read_text())["rows_done"] == 8
    with pytest.raises(ValueError, match="incomplete extraction, rows_done=8 of n_rows=11"):
        open_features(tmp_path / "m")

    with pytest.raises(FileExistsError, match="resume=True"):
        FeatureWriter.create(tmp_path / "m", **opts, resume=False)
    with pytest.raises(ValueError, match="cannot resume, dtype="):
        FeatureWriter.create(tmp_path / "m", **opts, dtype="float32")
    resumed = FeatureWriter.create(tmp_path / "m", **opts)
    assert resumed.rows_done == 8
    with pytest.raises(ValueError, match="start=4"):
        resumed.write_chunk(4, feats[4:8], ids[4:8])
    resumed.write_chunk(8, feats[8:], ids[8:])
    fs = resumed.finish()
    np.testing.assert_array_equal(fs.features, feats)
    np.testing.assert_array_equal(fs.ids, ids)
    with pytest.raises(FileExistsError, match="complete"):
        FeatureWriter.create(tmp_path / "m", **opts)
    assert not [p for p in os.listdir(tmp_path / "m") if p.endswith(".tmp")]


def test_writer_rejects_float16_overflow(tmp_path):
    writer = FeatureWriter.create(
        tmp_path / "m", n_rows=3, weight=np.ones((2, 4), np.float32), bias=np.zeros(2), classes="ab"
    )
    with pytest.raises(ValueError, match="row 1: non-finite"):
        writer.write_chunk(0, np.array([[1.0] * 4, [1e6] * 4]), np.arange(2))
    assert writer.rows_done == 0


def test_error_different_classes(tmp_path):
    a, _ = small_store(tmp_path, "a")
    b, _ = small_store(tmp_path, "b", classes=["c0", "c1", "cX", "c3", "c4", "c5"])
    with pytest.raises(ValueError, match=r"class lists differ at index 2: 'c2' in .*a vs 'cX' in .*b"):
        check_compatible([a, b])


def test_error_ids_mismatch(tmp_path):
    a, _ = small_store(tmp_path, "a")
    ids = np.arange(100, 110)
    ids[[3, 4]] = ids[[4, 3]]
    b, _ = small_store(tmp_path, "b", ids=ids)
    with pytest.raises(ValueError, match=r"ids differ at position 3: 103 in .*a vs 104 in .*b \(2 positions"):
        check_compatible([a, b])
    c, _ = small_store(tmp_path, "c", n_rows=9)
    with pytest.raises(ValueError, match="row counts differ: 10 ids"):
        check_compatible([a, c])


def test_error_truncated_features(tmp_path):
    small_store(tmp_path, "a")
    file = tmp_path / "a" / "features.npy"
    os.truncate(file, file.stat().st_size - 7)
    with pytest.raises(
        ValueError, match=r"features.npy: truncated: \d+ bytes on disk but the header's shape \(10, 8\)"
    ):
        open_features(tmp_path / "a")
    os.truncate(file, 20)  # not even a whole header
    with pytest.raises(ValueError, match="features.npy: truncated or not an .npy file"):
        open_features(tmp_path / "a")


def test_error_incomplete_and_missing(tmp_path):
    writer = FeatureWriter.create(tmp_path / "half", n_rows=10, weight=np.ones((3, 4)), bias=np.zeros(3), classes="xyz")
    writer.write_chunk(0, np.ones((4, 4)), np.arange(4))
    with pytest.raises(ValueError, match=r"half: incomplete extraction, rows_done=4 of n_rows=10"):
        open_features(tmp_path / "half")
    with pytest.raises(ValueError, match="rows_done=4 of n_rows=10"):
        writer.finish()
    small_store(tmp_path, "a")
    (tmp_path / "a" / "head.npz").unlink()
    with pytest.raises(FileNotFoundError, match=r"a: not a feature directory, missing \['head.npz'\]"):
        open_features(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_features(tmp_path / "nowhere")


def test_error_head_shape_mismatch(tmp_path):
    small_store(tmp_path, "a")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a" / "head.npz", weight=rng.random((6, 9), dtype=np.float32), bias=np.zeros(6, np.float32))
    with pytest.raises(ValueError, match=r"features have D=8 but the head's weight is \(6, 9\)"):
        open_features(tmp_path / "a")
    np.savez(tmp_path / "a" / "head.npz", weight=rng.random((5, 8), dtype=np.float32), bias=np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="6 class names but the head has K=5"):
        open_features(tmp_path / "a")
    (tmp_path / "a" / "head.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="unreadable head archive"):
        open_features(tmp_path / "a")


def test_ensemble_topk_rejects_bad_arguments():
    models = random_models(0, 10, 20)
    with pytest.raises(ValueError, match="k=0"):
        ensemble_topk(models, k=0)
    with pytest.raises(ValueError, match="k=21: larger than the 20 classes"):
        ensemble_topk(models, k=21)
    short = (models[1][0][:9], *models[1][1:])
    with pytest.raises(ValueError, match=r"sets\[1\]: 9 rows x 20 classes, but sets\[0\] has 10 x 20"):
        ensemble_topk([models[0], short])
    wrong_dim = (models[0][0], models[1][1], models[0][2], 1)
    with pytest.raises(ValueError, match=r"sets\[0\]: features \(10, 24\) do not match head weight \(20, 40\)"):
        ensemble_topk([wrong_dim])
    bad = models[0][0].copy()
    bad[6, 2] = np.inf
    with pytest.raises(ValueError, match=r"sets\[0\]: features row 6 is not finite"):
        ensemble_topk([(bad, *models[0][1:])])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    models = near_tied_models(7)
    cpu = ensemble_topk(models, k=3, fast=True)
    for fast in (False, True):
        gpu = ensemble_topk(models, k=3, fast=fast, device="cuda")
        assert torch.equal(gpu[0], cpu[0]) and torch.equal(gpu[1], cpu[1])


def test_features_from_loader_workers_equal_the_main_process(image_csv):
    """Extraction decodes images in DataLoader workers (in order, batches straddling chunks) and gets exactly what a
    single-process pass gets."""
    from lossguided.data.manifest import read_csv
    from lossguided.data.sources import make_dataset
    from lossguided.ensemble.extract import _Features
    from lossguided.models import create_model

    torch.manual_seed(0)
    model = create_model("test_resnet", num_classes=3, pretrained=False).eval()
    dataset = make_dataset(read_csv(image_csv), image_size=16)
    order = np.array([5, 3, 0, 1, 2, 4] + list(range(6, 24)))
    cpu = torch.device("cpu")
    ref = _Features(model, dataset, order, tta="hflip", batch_size=24, device=cpu, workers=0).take(24)
    feats = _Features(model, dataset, order, tta="hflip", batch_size=5, device=cpu, workers=2)
    assert feats.batches._num_workers == 2  # 24 rows >= 4 batches of 5: workers are used
    got = torch.cat([feats.take(n) for n in (7, 0, 11, 6)])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_auto_takes_the_bf16_scan_only_where_it_is_native_and_faster(monkeypatch):
    from lossguided.ensemble import combine

    def choice(flags, fp32_s, bf16_s):
        combine._choose_scan.cache_clear()
        monkeypatch.setattr(combine, "_cpu_flags", lambda: set(flags))
        monkeypatch.setattr(combine, "_gemm_seconds", lambda dev, dtype: fp32_s if dtype == torch.float32 else bf16_s)
        return combine.choose_scan("cpu")

    try:
        avx2 = choice({"avx2", "fma"}, 1.0, 0.1)  # bf16 would be emulated, whatever a timing says
        assert not avx2.bf16 and avx2.name == "fp32" and "avx512_bf16 or amx_bf16" in avx2.reason
        assert not choice({"avx512_bf16"}, 1.0, 0.9).bf16  # native but not measured faster
        assert choice({"amx_bf16"}, 1.0, 0.3).bf16
        models = random_models(4, 60, 200)
        combine._choose_scan.cache_clear()
        exact = ensemble_topk(models, k=2)
        assert all(torch.equal(a, b) for a, b in zip(ensemble_topk(models, k=2, fast="auto"), exact, strict=True))
        with pytest.raises(ValueError, match="fast='yes'"):
            ensemble_topk(models, fast="yes")
    finally:
        combine._choose_scan.cache_clear()
