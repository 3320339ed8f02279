"""`udabench score`: agreement with the official evaluator, encodings, layouts, every error case."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from oracles import official_class_iou
from udabench.cli import main
from udabench.data.pngio import write_png
from udabench.errors import DataError, UserError
from udabench.metrics import ConfusionMeter, score_matrix
from udabench.scoring import find_ground_truth, score_predictions, score_with_void, stem_of
from udabench.taxonomy import CLASS_NAMES, LABEL_ID_TO_TRAIN_ID, PALETTE, SUBSETS, TRAIN_ID_TO_LABEL_ID

CITIES = ("frankfurt", "lindau", "munster")


def stems(n: int) -> list[str]:
    return [f"{CITIES[i % 3]}_{i:06d}_000019" for i in range(n)]


def save(path: Path, arr: np.ndarray) -> Path:
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.uint8))
    write_png(path, t if t.ndim == 2 else t.permute(2, 0, 1).contiguous())
    return path


def write_gt(root: Path, labels: dict[str, np.ndarray]) -> list[Path]:
    return [save(root / "gtFine" / "val" / s.split("_")[0] / f"{s}_gtFine_labelIds.png", a)
            for s, a in labels.items()]


def write_preds(folder: Path, preds: dict[str, np.ndarray], suffix: str = "_leftImg8bit.png",
                tree: bool = False) -> list[Path]:
    return [save((folder / s.split("_")[0] if tree else folder) / f"{s}{suffix}", a)
            for s, a in preds.items()]


def random_case(n: int = 5, hw=(24, 40), seed: int = 0, drop=(31,)):
    """Random labelId ground truth (void ids included) and labelId predictions, 60% correct.

    The labelIds in ``drop`` occur nowhere, so their classes have zero union (NaN)."""
    rng = np.random.default_rng(seed)
    ids = np.setdiff1d(np.arange(34), drop)
    gts, preds = {}, {}
    for s in stems(n):
        gt = rng.choice(ids, hw).astype(np.uint8)
        noise = rng.choice(ids, hw).astype(np.uint8)
        gts[s], preds[s] = gt, np.where(rng.random(hw) < 0.6, gt, noise).astype(np.uint8)
    return gts, preds


def test_stem_matching_rules():
    assert stem_of("frankfurt_000000_000294_leftImg8bit.png") == "frankfurt_000000_000294"
    assert stem_of("frankfurt_000000_000294_gtFine_labelIds.png") == "frankfurt_000000_000294"
    assert stem_of("frankfurt_000000_000294.png") == "frankfurt_000000_000294"
    assert stem_of("frankfurt_000000_000294_pred.png") == "frankfurt_000000_000294"
    assert stem_of("notes.png") is None


def test_labelid_scores_equal_official_evaluator_with_void_predictions(tmp_path):
    gts, preds = random_case()
    gt_files = write_gt(tmp_path / "cs", gts)
    pred_files = write_preds(tmp_path / "pred", preds)
    result = score_predictions(tmp_path / "pred", tmp_path / "cs", "labelid", workers=2)
    official = official_class_iou(pred_files, gt_files)
    assert result.matrix[:, 19].sum() > 0  # non-evaluated labelIds were predicted
    for name in CLASS_NAMES:
        ours, theirs = result.score.iou[name], official[name]
        assert (math.isnan(ours) and math.isnan(theirs)) or ours == pytest.approx(theirs, abs=1e-12)
    assert math.isnan(result.score.iou["train"])
    # Dropping the void column (treating void predictions as ignored) would not agree.
    naive = score_matrix(result.matrix[:19, :19]).iou
    assert any(abs(naive[n] - official[n]) > 1e-6 for n in CLASS_NAMES if not math.isnan(naive[n]))


def test_convention_b_equals_official_with_those_classes_ignored(tmp_path):
    gts, preds = random_case(drop=(), seed=3)
    write_gt(tmp_path / "cs", gts)
    pred_files = write_preds(tmp_path / "pred", preds)
    # Official evaluator on ground truth whose terrain/truck/train pixels are "unlabeled".
    blanked = {s: np.where(np.isin(a, [22, 27, 31]), 0, a) for s, a in gts.items()}
    official = official_class_iou(pred_files, write_gt(tmp_path / "cs_b", blanked))
    result = score_predictions(tmp_path / "pred", tmp_path / "cs", "labelid", ("19", "16", "13"),
                               convention="B", workers=1)
    expected = np.mean([official[CLASS_NAMES[c]] for c in SUBSETS["16"]])
    assert result.score.miou["16"] == pytest.approx(expected, abs=1e-12)
    assert result.score.miou["16"] != pytest.approx(
        score_predictions(tmp_path / "pred", tmp_path / "cs", "labelid", convention="A").score.miou["16"])


def test_three_encodings_agree_with_each_other_and_the_metric(tmp_path):
    rng = np.random.default_rng(1)
    gts, train_preds = {}, {}
    for s in stems(4):
        gts[s] = rng.choice(np.arange(34), (16, 32)).astype(np.uint8)
        train_preds[s] = rng.integers(0, 19, (16, 32)).astype(np.uint8)
    write_gt(tmp_path / "cs", gts)
    write_preds(tmp_path / "t", train_preds)
    write_preds(tmp_path / "l", {s: TRAIN_ID_TO_LABEL_ID[p] for s, p in train_preds.items()})
    write_preds(tmp_path / "c", {s: PALETTE[p] for s, p in train_preds.items()})
    runs = [score_predictions(tmp_path / "t", tmp_path / "cs", "trainid"),
            score_predictions(tmp_path / "l", tmp_path / "cs", "labelid"),
            score_predictions(tmp_path / "l", tmp_path / "cs"),  # auto: labelIds above 18
            score_predictions(tmp_path / "c", tmp_path / "cs", "color"),
            score_predictions(tmp_path / "c", tmp_path / "cs")]  # auto: RGB
    assert [r.encoding for r in runs] == ["trainid", "labelid", "labelid", "color", "color"]
    for r in runs[1:]:
        np.testing.assert_array_equal(r.matrix, runs[0].matrix)
    meter = ConfusionMeter()
    for s in gts:
        meter.update(train_preds[s], LABEL_ID_TO_TRAIN_ID[gts[s]])
    np.testing.assert_array_equal(runs[0].matrix[:19, :19], meter.matrix.numpy())
    assert runs[0].matrix[:, 19].sum() == 0
    expected = meter.score()
    assert runs[0].score.miou == pytest.approx(expected.miou)
    assert runs[0].score.pixel_accuracy == pytest.approx(expected.pixel_accuracy)
    assert score_with_void(runs[0].matrix).iou == pytest.approx(expected.iou, nan_ok=True)


def test_flat_and_tree_layouts_with_any_suffix_score_the_same(tmp_path):
    gts, preds = random_case(n=6)
    write_gt(tmp_path / "cs", gts)
    write_preds(tmp_path / "tree" / "val", preds, tree=True)
    items = list(preds.items())
    for i, suffix in enumerate(["_pred.png", ".png", "_gtFine_labelIds.png"]):
        write_preds(tmp_path / "flat", dict(items[2 * i: 2 * i + 2]), suffix=suffix)
    a = score_predictions(tmp_path / "tree", tmp_path / "cs", "labelid")
    b = score_predictions(tmp_path / "flat", tmp_path / "cs", "labelid")
    np.testing.assert_array_equal(a.matrix, b.matrix)
    assert a.ids == b.ids == list(find_ground_truth(tmp_path / "cs"))


# --- errors -----------------------------------------------------------------------------------
@pytest.fixture
def case(tmp_path):
    """12 ground-truth images (labelIds) and matching labelId predictions in tmp_path/pred."""
    gts, preds = random_case(n=12, hw=(8, 16), seed=5)
    write_gt(tmp_path / "cs", gts)
    write_preds(tmp_path / "pred", preds)
    return tmp_path, gts, preds


def _error(tmp_path, encoding="auto", exc=DataError) -> str:
    with pytest.raises(exc) as info:
        score_predictions(tmp_path / "pred", tmp_path / "cs", encoding, workers=2)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_missing_and_extra_files_are_one_error_naming_the_first_ten(case):
    tmp_path, gts, _ = case
    for p in (tmp_path / "pred").iterdir():
        p.unlink()
    (tmp_path / "pred" / "notes.txt").write_text("x")
    save(tmp_path / "pred" / "zurich_000000_000019_leftImg8bit.png", np.zeros((8, 16)))
    msg = _error(tmp_path)
    names = list(find_ground_truth(tmp_path / "cs"))  # the order of the listing
    assert "12 validation images have no prediction" in msg and "(12 in all)" in msg
    assert all(s in msg for s in names[:10]) and names[10] not in msg and names[11] not in msg
    assert "2 files match no validation image" in msg
    assert "notes.txt" in msg and "zurich_000000_000019" in msg


def test_duplicate_prediction_is_an_error(case):
    tmp_path, gts, preds = case
    s = next(iter(gts))
    save(tmp_path / "pred" / "sub" / f"{s}_pred.png", preds[s])
    assert "1 images have several predictions" in _error(tmp_path) and s in _error(tmp_path)


def test_wrong_size_and_unreadable_predictions_are_listed(case, png):
    tmp_path, gts, preds = case
    a, b, c = list(gts)[:3]
    save(tmp_path / "pred" / f"{a}_leftImg8bit.png", np.zeros((8, 15)))
    save(tmp_path / "pred" / f"{b}_leftImg8bit.png", np.zeros((16, 32)))
    png.truncate(tmp_path / "pred" / f"{c}_leftImg8bit.png")
    msg = _error(tmp_path)
    assert "2 predictions whose size differs from the ground truth" in msg
    assert f"{a}_leftImg8bit.png (15x8, ground truth 16x8)" in msg and b in msg
    assert "1 unreadable PNGs" in msg and c in msg


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_class_in_every_encoding_scores_like_the_official_void(tmp_path, seed):
    """255 in trainIds, a void labelId (0) or 255 in labelIds, and black in colour all mean "no
    class": a false negative of the true class and a false positive of nobody, as the official
    evaluator scores labelId 0. All give the official evaluator's IoUs."""
    rng = np.random.default_rng(seed)
    gts, train = {}, {}
    for s in stems(4):
        gts[s] = rng.choice(np.arange(34), (12, 20)).astype(np.uint8)
        t = rng.integers(0, 19, (12, 20)).astype(np.uint8)
        t[rng.random((12, 20)) < 0.3] = 255  # no class on 30% of the pixels
        train[s] = t
    gt_files = write_gt(tmp_path / "cs", gts)
    write_preds(tmp_path / "t", train)
    label_files = write_preds(tmp_path / "l", {s: TRAIN_ID_TO_LABEL_ID[p] for s, p in train.items()})
    write_preds(tmp_path / "l255", {s: np.where(p == 255, 255, TRAIN_ID_TO_LABEL_ID[p])
                                    for s, p in train.items()})
    write_preds(tmp_path / "c", {s: PALETTE[p] for s, p in train.items()})  # 255 -> black
    assert TRAIN_ID_TO_LABEL_ID[255] == 0 and tuple(PALETTE[255]) == (0, 0, 0)
    runs = [score_predictions(tmp_path / "t", tmp_path / "cs", "trainid"),
            score_predictions(tmp_path / "l", tmp_path / "cs", "labelid"),
            score_predictions(tmp_path / "l255", tmp_path / "cs", "labelid"),
            score_predictions(tmp_path / "c", tmp_path / "cs", "color")]
    void = sum(int(((p == 255) & (LABEL_ID_TO_TRAIN_ID[gts[s]] != 255)).sum())
               for s, p in train.items())
    assert runs[0].matrix[:, 19].sum() == void > 0  # void predictions on evaluated pixels
    for r in runs[1:]:
        np.testing.assert_array_equal(r.matrix, runs[0].matrix)
    official = official_class_iou(label_files, gt_files)
    for name in CLASS_NAMES:
        ours, theirs = runs[0].score.iou[name], official[name]
        assert (math.isnan(ours) and math.isnan(theirs)) or ours == pytest.approx(theirs, abs=1e-12)
    # Dropping the void column (255 = ignored) would be another, wrong, number.
    naive = score_matrix(runs[0].matrix[:19, :19]).iou
    assert any(abs(naive[n] - official[n]) > 1e-6 for n in CLASS_NAMES if not math.isnan(naive[n]))


def test_255_among_train_ids_is_ambiguous_for_auto(tmp_path):
    gts, _ = random_case(n=2, hw=(8, 16))
    write_gt(tmp_path / "cs", gts)
    write_preds(tmp_path / "pred", {s: np.where(np.eye(8, 16) > 0, 255, 3).astype(np.uint8)
                                    for s in gts})
    assert "--encoding trainid" in _error(tmp_path, "auto", UserError)


def test_values_outside_each_encoding(case):
    tmp_path, gts, preds = case
    s = next(iter(gts))
    bad = preds[s].copy()
    bad[0, 0] = 40
    save(tmp_path / "pred" / f"{s}_leftImg8bit.png", bad)
    for encoding in ("labelid", "auto"):
        msg = _error(tmp_path, encoding)
        assert "outside labelIds 0..33" in msg and f"{s}_leftImg8bit.png (values 40)" in msg
    msg = _error(tmp_path, "trainid")  # every labelId file has values above 18
    assert "12 predictions hold values outside trainIds 0..18" in msg
    # Colour: one pixel in a colour that is not one of the 19 classes.
    rgb = {k: PALETTE[LABEL_ID_TO_TRAIN_ID[v] % 19] for k, v in preds.items()}
    rgb[s] = rgb[s].copy()
    rgb[s][1, 1] = (1, 2, 3)
    write_preds(tmp_path / "rgb", rgb)
    with pytest.raises(DataError, match=rf"outside the official colours.*{s}_leftImg8bit.png \(colour \(1, 2, 3\)"):
        score_predictions(tmp_path / "rgb", tmp_path / "cs")


def test_channel_mismatches_and_mixtures(case):
    tmp_path, gts, preds = case
    assert "expects RGB PNGs; 12 are single-channel" in _error(tmp_path, "color")
    s = next(iter(gts))
    save(tmp_path / "pred" / f"{s}_leftImg8bit.png", PALETTE[LABEL_ID_TO_TRAIN_ID[preds[s]] % 19])
    assert "mix RGB and single-channel PNGs (1 of 12 are RGB" in _error(tmp_path)
    assert "expects single-channel PNGs; 1 are RGB" in _error(tmp_path, "labelid")


def test_ambiguous_encoding_asks_for_the_flag(case):
    tmp_path, gts, _ = case
    write_preds(tmp_path / "pred", {s: np.full((8, 16), 7, np.uint8) for s in gts})
    msg = _error(tmp_path, "auto", UserError)
    assert "--encoding trainid" in msg and "--encoding labelid" in msg
    # Given the flag, the same files score (as labelId 7 = road, or as trainId 7 = traffic sign).
    road = score_predictions(tmp_path / "pred", tmp_path / "cs", "labelid").score.iou
    sign = score_predictions(tmp_path / "pred", tmp_path / "cs", "trainid").score.iou
    assert road["road"] > 0 and road["traffic sign"] == 0 and sign["traffic sign"] > 0


def test_ground_truth_outside_the_labelids_is_a_data_error(case):
    tmp_path, gts, _ = case
    s = next(iter(find_ground_truth(tmp_path / "cs")))
    broken = gts[s].copy()
    broken[0, 0] = 50
    write_gt(tmp_path / "cs", {s: broken})
    msg = _error(tmp_path)
    assert f"{find_ground_truth(tmp_path / 'cs')[s]} holds values [50] outside 0..33" in msg


# --- the command ----------------------------------------------------------------------------
def _hand_made(root: Path) -> Path:
    """Two 2x2 images whose scores are computed by hand in the test below."""
    write_gt(root / "cityscapes", {"aachen_000000_000019": np.array([[7, 7], [26, 0]]),
                                   "bochum_000001_000019": np.array([[23, 23], [23, 23]])})
    return Path(write_preds(root / "pred", {"aachen_000000_000019": np.array([[7, 26], [26, 7]]),
                                            "bochum_000001_000019": np.array([[23, 23], [0, 23]])},
                            suffix="_pred.png")[0].parent)


def test_cli_json_and_per_image_csv_by_hand(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("UDABENCH_DATA", raising=False)
    pred = _hand_made(tmp_path / "data")
    csv = tmp_path / "per_image.csv"
    args = ["score", str(pred), "-b", "gta2cs", "--root", str(tmp_path / "data"), "--format", "json",
            "--per-image", str(csv)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    # aachen: road 1 TP, 1 FN (predicted car); road predicted on unlabeled is no FP -> 1/2.
    # car: 1 TP, 1 FP -> 1/2. bochum: sky 3 TP, 1 FN to a void labelId -> 3/4.
    assert record["iou"]["road"] == pytest.approx(50) and record["iou"]["car"] == pytest.approx(50)
    assert record["iou"]["sky"] == pytest.approx(75) and record["iou"]["person"] is None
    assert record["miou"]["19"] == pytest.approx(175 / 3)
    assert record["pixel_accuracy"] == pytest.approx(500 / 7)
    assert record["encoding"] == "labelid" and record["void_predictions"] == 1
    assert record["images"] == 2 and "gta2cs" in record["protocol"]
    table = pd.read_csv(csv)
    assert list(table["image"]) == ["aachen_000000_000019", "bochum_000001_000019"]
    assert list(table["pixels"]) == [3, 4]
    assert table["pixel_accuracy"].tolist() == pytest.approx([200 / 3, 75])
    assert table["road"][0] == pytest.approx(50) and math.isnan(table["road"][1])
    assert table["sky"][1] == pytest.approx(75) and math.isnan(table["sky"][0])
    assert table["mIoU19"].tolist() == pytest.approx([50, 75])
    # The CSV is never overwritten.
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "already exists" in again.output
    assert pd.read_csv(csv).equals(table)


def test_cli_rich_and_markdown_and_error_exit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pred = _hand_made(tmp_path / "data")
    base = ["score", str(pred), "-b", "synthia2cs", "--root", str(tmp_path / "data")]
    rich = CliRunner().invoke(main, base)
    assert rich.exit_code == 0, rich.output
    assert "mIoU16" in rich.output and "mIoU13" in rich.output and "convention A" in rich.output
    md = CliRunner().invoke(main, base + ["--format", "markdown"])
    assert "| road | 50.0 |" in md.output and "| **mIoU13** |" in md.output
    (pred / "aachen_000000_000019_pred.png").unlink()
    bad = CliRunner().invoke(main, base)
    assert bad.exit_code == 2 and "aachen_000000_000019" in bad.output
    assert "Traceback" not in bad.output
    # Only the target's labels are needed; a missing Cityscapes says where it was expected.
    gone = CliRunner().invoke(main, base[:-1] + [str(tmp_path / "elsewhere")])
    assert gone.exit_code == 2 and str(tmp_path / "elsewhere" / "cityscapes") in gone.output


def test_cli_on_a_tiny_minicity_benchmark_from_the_config(tmp_path, monkeypatch):
    from udabench.registry import BENCHMARKS

    monkeypatch.chdir(tmp_path)
    (tmp_path / "udabench.toml").write_text(
        "[benchmarks.minicity-gta2cs]\n"
        "minicity = {n_source = 1, n_target_train = 1, n_target_val = 3, height = 32, width = 64}\n"
        "eval_label_size = [64, 32]\n")
    bench = BENCHMARKS.get("minicity-gta2cs").with_overrides(
        {"minicity": {"n_source": 1, "n_target_train": 1, "n_target_val": 3, "height": 32,
                      "width": 64}, "eval_label_size": [64, 32]})
    _, target = bench.roots(tmp_path / "data")
    gt = find_ground_truth(target)
    pred = tmp_path / "pred"
    pred.mkdir()
    for stem, path in gt.items():  # perfect predictions, as labelIds, in a flat folder
        (pred / f"{stem}.png").write_bytes(path.read_bytes())
    res = CliRunner().invoke(main, ["score", str(pred), "-b", "minicity-gta2cs", "--root",
                                    str(tmp_path / "data"), "--format", "json", "--workers", "1"])
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert record["spec_hash"] == bench.hash() and record["images"] == 3
    present = [v for v in record["iou"].values() if v is not None]
    assert present and all(v == pytest.approx(100) for v in present)
    assert record["miou"]["19"] == pytest.approx(100) and record["pixel_accuracy"] == pytest.approx(100)


# --- every PNG colour type and bit depth ------------------------------------------------------
def _every_format(train_ids: np.ndarray):
    """(name, PNG bytes) of one trainId map in every single-channel type and depth that holds it."""
    from pngkit import encode_png

    top = int(train_ids.max())
    for color_type in (0, 3):
        for depth in (1, 2, 4, 8):
            if top < 2 ** depth:
                palette = (np.random.default_rng(depth).integers(0, 256, (2 ** depth, 3))
                           if color_type == 3 else None)
                for interlace in (False, True):
                    yield (f"type{color_type}-{depth}bit-{interlace}",
                           encode_png(train_ids[..., None], color_type, depth, palette, interlace))


def test_predictions_in_any_depth_score_like_8_bit(tmp_path):
    """A prediction saved with 1, 2 or 4 bits per pixel (Pillow does so for <= 16 colours), grey or
    palette, interlaced or not, scores exactly like the same prediction in 8 bits."""
    rng = np.random.default_rng(7)
    gts = {s: rng.choice(np.arange(34), (9, 13)).astype(np.uint8) for s in stems(2)}
    write_gt(tmp_path / "cs", gts)
    for top in (1, 3, 15):  # trainIds that fit 1, 2 and 4 bits
        preds = {s: rng.integers(0, top + 1, (9, 13)).astype(np.uint8) for s in gts}
        write_preds(tmp_path / f"ref{top}", preds)
        reference = score_predictions(tmp_path / f"ref{top}", tmp_path / "cs", "trainid").matrix
        formats = {s: dict(_every_format(p)) for s, p in preds.items()}
        for name in formats[next(iter(gts))]:
            folder = tmp_path / f"{top}-{name}"
            folder.mkdir()
            for s in gts:
                (folder / f"{s}.png").write_bytes(formats[s][name])
            result = score_predictions(folder, tmp_path / "cs", "trainid", workers=1)
            np.testing.assert_array_equal(result.matrix, reference, err_msg=name)


@pytest.mark.parametrize("color_type,depth,what", [(0, 16, "16-bit"), (4, 8, "2-channel"),
                                                   (6, 8, "4-channel"), (2, 16, "16-bit")])
def test_prediction_formats_that_hold_no_class_map_are_refused(tmp_path, color_type, depth, what):
    from pngkit import PNG_TYPES, encode_png

    gts, preds = random_case(n=2, hw=(8, 16))
    write_gt(tmp_path / "cs", gts)
    write_preds(tmp_path / "pred", preds)
    bad = next(iter(gts))
    samples = np.full((8, 16, PNG_TYPES[color_type][0]), 7, dtype=np.int64)
    (tmp_path / "pred" / f"{bad}_leftImg8bit.png").write_bytes(encode_png(samples, color_type, depth))
    msg = _error(tmp_path, "labelid")
    assert "1 PNGs in the wrong format" in msg and f"({what}; expected 8-bit grey or RGB)" in msg
