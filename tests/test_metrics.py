import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.io import write_png

from udabench import taxonomy as T
from udabench.errors import UserError
from udabench.metrics import ConfusionMeter, confusion_matrix, iou_from_matrix, score_matrix
from tests.oracles import official_class_iou


def test_hand_computed_example():
    # 2x3 image: gt [[0,0,1],[1,255,2]], pred [[0,1,1],[1,0,0]]
    gt = torch.tensor([[0, 0, 1], [1, 255, 2]], dtype=torch.uint8)
    pred = torch.tensor([[0, 1, 1], [1, 0, 0]], dtype=torch.uint8)
    m = confusion_matrix(pred, gt)
    assert m.dtype == torch.int64 and m.shape == (19, 19)
    assert m[0, 0] == 1 and m[0, 1] == 1 and m[1, 1] == 2 and m[2, 0] == 1 and m.sum() == 5
    iou = iou_from_matrix(m)
    # class 0: tp 1, gt 2, pred 2 -> 1/3 ; class 1: tp 2, gt 2, pred 3 -> 2/3 ; class 2: 0/1
    assert iou[0] == pytest.approx(1 / 3) and iou[1] == pytest.approx(2 / 3) and iou[2] == 0
    assert all(math.isnan(v) for v in iou[3:])
    s = score_matrix(m)
    assert s.miou["19"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert s.pixel_accuracy == pytest.approx(3 / 5)


def test_convention_b_ignores_gt_terrain_truck_train():
    m = np.zeros((19, 19), dtype=np.int64)
    m[0, 0] = 8  # road right
    m[9, 0] = 2  # terrain predicted as road: an FP for road under A only
    m[13, 13] = 5
    a = score_matrix(m, ("19", "16"), "A")
    b = score_matrix(m, ("19", "16"), "B")
    assert a.miou["16"] == pytest.approx((0.8 + 1.0) / 2)
    assert b.miou["16"] == pytest.approx(1.0)
    # mIoU19 never depends on the 16-class convention
    assert a.miou["19"] == b.miou["19"]


def test_subset_mean_is_not_scaled_19_mean():
    m = np.diag(np.arange(1, 20)).astype(np.int64)
    m[9, 10] = 10  # terrain mistaken as sky: terrain IoU 9/19, sky 11/21
    s = score_matrix(m)
    assert s.miou["16"] == pytest.approx(np.mean([1.0] * 15 + [11 / 21]))
    assert s.miou["16"] != pytest.approx(s.miou["19"] * 19 / 16)
    assert s.miou["13"] == pytest.approx(np.mean([1.0] * 12 + [11 / 21]))


def test_size_mismatch_is_an_error():
    with pytest.raises(UserError, match="differs from label size"):
        confusion_matrix(torch.zeros(4, 5, dtype=torch.uint8), torch.zeros(4, 6, dtype=torch.uint8))


@pytest.mark.parametrize("bad", [19, 100, 254])
def test_label_values_out_of_range_are_errors(bad):
    label = torch.zeros(3, 3, dtype=torch.uint8)
    label[1, 1] = bad
    with pytest.raises(UserError, match=f"label value {bad}"):
        confusion_matrix(torch.zeros(3, 3, dtype=torch.uint8), label, name="img_7")


def test_prediction_out_of_range_is_an_error():
    pred = torch.zeros(3, 3, dtype=torch.int64)
    pred[0, 0] = 19
    with pytest.raises(UserError, match="img_7: predicted class 19"):
        confusion_matrix(pred, torch.zeros(3, 3, dtype=torch.uint8), name="img_7")


def test_matches_numpy_reference_with_masking():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 19, (64, 80)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.2] = 255
    pred = rng.integers(0, 19, (64, 80)).astype(np.uint8)
    keep = gt != 255
    ref = np.bincount(gt[keep].astype(int) * 19 + pred[keep], minlength=361).reshape(19, 19)
    assert (confusion_matrix(pred, gt).numpy() == ref).all()


def test_agrees_with_torchmetrics_per_class_iou():
    tm = pytest.importorskip("torchmetrics.classification", reason="torchmetrics not installed")
    rng = np.random.default_rng(2)
    metric = tm.MulticlassJaccardIndex(num_classes=19, average="none", ignore_index=255)
    meter = ConfusionMeter()
    for _ in range(3):
        gt = torch.from_numpy(rng.integers(0, 19, (40, 60)).astype(np.uint8))
        gt[torch.from_numpy(rng.random((40, 60)) < 0.1)] = 255
        pred = torch.from_numpy(rng.integers(0, 19, (40, 60)).astype(np.uint8))
        metric.update(pred.long(), gt.long())
        meter.update(pred, gt)
    ours = iou_from_matrix(meter.matrix)
    assert np.allclose(ours, metric.compute().numpy(), atol=1e-6)


def test_streaming_equals_one_shot_and_keeps_per_image():
    rng = np.random.default_rng(3)
    preds = [rng.integers(0, 19, (8, 8)).astype(np.uint8) for _ in range(4)]
    gts = [rng.integers(0, 19, (8, 8)).astype(np.uint8) for _ in range(4)]
    meter = ConfusionMeter(keep_per_image=True)
    for i, (p, g) in enumerate(zip(preds, gts)):
        meter.update(p, g, image_id=f"im{i}")
    whole = confusion_matrix(np.concatenate(preds), np.concatenate(gts))
    assert torch.equal(meter.matrix, whole)
    assert len(meter.per_image) == 4 and meter.image_ids[2] == "im2"
    assert (sum(meter.per_image) == whole.numpy()).all()


def test_zero_union_class_is_nan_and_skipped():
    m = np.zeros((19, 19), dtype=np.int64)
    m[0, 0] = 5
    s = score_matrix(m)
    assert s.miou["19"] == 1.0 and math.isnan(s.iou["sky"])


def _write_label_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(torch.from_numpy(arr)[None], str(path))


def test_agrees_with_official_cityscapes_evaluator(tmp_path):
    pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    rng = np.random.default_rng(4)
    meter = ConfusionMeter()
    gts, preds = [], []
    for i in range(3):
        # ground truth in labelIds including non-evaluated ids (0, 1, 4, 29)
        label_ids = np.array([c.label_id for c in T.CLASSES] + [0, 1, 4, 29])
        gt_lab = rng.choice(label_ids, size=(48, 96)).astype(np.uint8)
        # predictions in trainIds -> labelIds for the official tool; drop a class to get a NaN
        pred_train = rng.integers(0, 18, (48, 96)).astype(np.uint8)
        gt_path = tmp_path / "gtFine" / "val" / "city" / f"city_000000_{i:06d}_gtFine_labelIds.png"
        pred_path = tmp_path / "pred" / f"city_000000_{i:06d}.png"
        _write_label_png(gt_path, gt_lab)
        _write_label_png(pred_path, T.TRAIN_ID_TO_LABEL_ID[pred_train])
        gts.append(gt_path)
        preds.append(pred_path)
        meter.update(pred_train, T.LABEL_ID_TO_TRAIN_ID[gt_lab])
    official = official_class_iou(preds, gts)
    ours = meter.score().iou
    for name, value in ours.items():
        if math.isnan(value):
            assert math.isnan(official[name])
        else:
            assert value == pytest.approx(official[name], abs=1e-9), name
