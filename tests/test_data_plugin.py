"""A dataset added from outside udabench: one descriptor class and ``@register_dataset`` in a test
module (as a plug-in package would do), then built, verified, prepared and scored with no edit of
udabench; and the ``udabench.datasets`` entry-point group that loads such packages."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from udabench.commands.data import data
from udabench.data import (DatasetSpec, FilePattern, build_dataset, dataset_names, get_dataset,
                           lookup_table, register_dataset)
from udabench.data.prepare import prepare_dataset
from udabench.data.verify import verify_dataset
from udabench.errors import DataError, UserError
from udabench.scoring import find_ground_truth, score_predictions
from udabench.taxonomy import LABEL_ID_TO_TRAIN_ID


@register_dataset
class TinyNight(DatasetSpec):
    """TinyNight: a night-time target in a Dark Zurich-like layout, labels stored as trainIds."""

    name = "tiny-night"
    title = "TinyNight"
    url = "the test that made it"
    images = FilePattern("rgb_anon/{split}/night/*/{id}_rgb_anon.png")
    labels = FilePattern("gt/{split}/night/*/{id}_gt_labelTrainIds.png")
    splits = ("train", "val")
    eval_splits = ("val",)
    unlabelled_splits = ("train",)
    example_id = "<frame>"
    wildcard_names = ("<sequence>",)
    label_encoding = "8-bit trainIds (255 = ignore)"
    lut = lookup_table({i: i for i in range(19)})
    max_label_value = 18


@pytest.fixture(scope="module")
def night(tiny_cityscapes, tmp_path_factory) -> Path:
    """TinyNight made from the tiny Cityscapes tree: sequences are its cities, labels trainIds."""
    root = tmp_path_factory.mktemp("plugin") / "tiny-night"
    for split in ("train", "val"):
        for image in sorted((tiny_cityscapes / "leftImg8bit" / split).rglob("*_leftImg8bit.png")):
            seq, stem = image.parent.name, image.name.replace("_leftImg8bit.png", "")
            dst = root / "rgb_anon" / split / "night" / seq / f"{stem}_rgb_anon.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, dst)
            label = tiny_cityscapes / "gtFine" / split / seq / f"{stem}_gtFine_labelIds.png"
            out = root / "gt" / split / "night" / seq / f"{stem}_gt_labelTrainIds.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(LABEL_ID_TO_TRAIN_ID[np.array(Image.open(label))]).save(out)
    return root


def test_the_registered_dataset_is_listed_and_described():
    assert "tiny-night" in dataset_names()
    spec = get_dataset("tiny-night")
    assert spec.title == "TinyNight" and spec.subdir == "tiny-night"
    assert "rgb_anon/{train,val}/night/<sequence>/<frame>_rgb_anon.png" in spec.tree(Path("R"))
    result = CliRunner().invoke(data, ["list"])
    assert result.exit_code == 0 and "tiny-night" in result.output


def test_built_like_any_dataset(night, tiny_cityscapes):
    val = build_dataset("tiny-night", night, "val", manifest=None)
    reference = build_dataset("cityscapes", tiny_cityscapes, "val", manifest=None)
    assert val.ids == reference.ids
    for i in range(len(val)):
        assert np.array_equal(val[i]["label"].numpy(), reference[i]["label"].numpy())
        assert np.array_equal(val[i]["image"].numpy(), reference[i]["image"].numpy())
    train = build_dataset("tiny-night", night, "train", manifest=None)
    assert not train.with_labels and "label" not in train[0]  # the target firewall holds
    with pytest.raises(DataError, match="unknown TinyNight split 'test'"):
        build_dataset("tiny-night", night, "test")


def test_verified_and_prepared(night, tmp_path):
    report = verify_dataset("tiny-night", night)
    assert not report.problems and report.splits["val"]["pairs"] == 6
    result = CliRunner().invoke(data, ["verify", "tiny-night", "--root", str(night), "--workers", "1"])
    assert result.exit_code == 0, result.output
    manifest = prepare_dataset("tiny-night", night, tmp_path / "prepared")
    assert manifest.counts["ok"] == 12
    assert all(e.class_counts is None for e in manifest.entries if e.split == "train")
    assert all(e.class_counts is not None for e in manifest.entries if e.split == "val")
    broken = tmp_path / "broken"
    shutil.copytree(night, broken)
    shutil.rmtree(broken / "gt")
    with pytest.raises(DataError, match=r"TinyNight folder .*broken/gt not found .*has 'rgb_anon' "
                                        r"but no 'gt'"):
        verify_dataset("tiny-night", broken)


def test_scored_and_exported_in_its_own_layout(night, tmp_path):
    gt = find_ground_truth(night, "val", "tiny-night")
    spec = get_dataset("tiny-night")
    for image_id, path in gt.items():  # perfect predictions, trainIds, <sequence>/<id>_pred.png
        rel = spec.prediction_path(image_id, (path.parent.name,))
        assert rel.parts[0] == path.parent.name
        out = tmp_path / "pred" / rel.with_name(f"{image_id}_pred.png")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out)
    result = score_predictions(tmp_path / "pred", night, "trainid", kind="tiny-night", workers=1)
    present = [v for v in result.score.iou.values() if not np.isnan(v)]
    assert present and all(v == 1.0 for v in present) and result.score.pixel_accuracy == 1.0
    same = score_predictions(tmp_path / "pred", night, "labelid", kind="tiny-night", workers=1)
    np.testing.assert_array_equal(same.matrix, result.matrix)  # its own ids are trainIds
    assert spec.export_lut[:19].tolist() == list(range(19))


def test_descriptors_that_cannot_work_are_refused_when_registered():
    class NoLut(DatasetSpec):
        name = "no-lut"
        images = FilePattern("i/{id}.png")
        labels = FilePattern("l/{id}.png")
        max_label_value = 3

    with pytest.raises(TypeError, match="lut must be a 1-D uint8"):
        register_dataset(NoLut)
    with pytest.raises(ValueError, match="needs one '{id}'"):
        FilePattern("images/x.png")
    with pytest.raises(ValueError, match="must end in .png"):
        FilePattern("images/{id}.jpg")

    class BadSplit(TinyNight):
        name = "bad-split"
        eval_splits = ("test",)

    with pytest.raises(ValueError, match=r"\['test'\] not in splits"):
        register_dataset(BadSplit)
    assert "no-lut" not in dataset_names() and "bad-split" not in dataset_names()


def test_plugins_load_through_the_entry_point_group(tmp_path, monkeypatch):
    """A package that declares ``[project.entry-points."udabench.datasets"]`` is loaded on the first
    lookup; a broken one is one error line naming it."""
    from udabench.data.registry import _load_plugins

    (tmp_path / "night_plugin.py").write_text(
        "from udabench.data import register_dataset\n"
        "from test_data_plugin import TinyNight\n\n"
        "@register_dataset\n"
        "class EntryPointNight(TinyNight):\n"
        "    '''Registered by an entry point.'''\n"
        "    name = 'entry-point-night'\n")
    info = tmp_path / "night_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: night-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[udabench.datasets]\nnight = night_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _load_plugins()
    assert get_dataset("entry-point-night").title == "TinyNight"
    (info / "entry_points.txt").write_text("[udabench.datasets]\nbroken = no_such_module_xyz\n")
    with pytest.raises(UserError, match=r"dataset plug-in 'broken' \(no_such_module_xyz\) failed"):
        _load_plugins()


def test_a_target_train_split_shipped_without_labels(night, tmp_path):
    """Dark Zurich ships no labels for its training split: verify and prepare check its images,
    and still check every validation label."""
    root = tmp_path / "no-train-labels"
    shutil.copytree(night, root)
    shutil.rmtree(root / "gt" / "train")
    report = verify_dataset("tiny-night", root)
    assert not report.problems and report.splits["train"] == {"images": 6, "labels": 0, "pairs": 6}
    manifest = prepare_dataset("tiny-night", root)
    train = [e for e in manifest.entries if e.split == "train"]
    assert len(train) == 6 and all(e.detail == "the split has no labels" for e in train)
    assert len(build_dataset("tiny-night", root, "train")) == 6  # the label-free view
    shutil.rmtree(root / "gt" / "val")  # labels of a scored split are never optional
    with pytest.raises(DataError, match=r"no-train-labels/gt/val not found"):
        verify_dataset("tiny-night", root)
