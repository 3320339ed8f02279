"""Benchmark specs: registered values, hashing, missing data, and the datasets they build."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil

import pytest

from udabench.benchmarks import GTA2CS, MINICITY_GTA2CS, MINICITY_SYNTHIA2CS, SYNTHIA2CS, Benchmark
from udabench.errors import ConfigError, DataError
from udabench.registry import BENCHMARKS

SMALL = dict(source_train_size=(32, 16), target_train_size=(32, 16), eval_input_size=(32, 16),
             eval_label_size=(64, 32))


def test_registered_specs_follow_the_protocol():
    assert {"gta2cs", "synthia2cs", "minicity-gta2cs", "minicity-synthia2cs"} <= set(BENCHMARKS)
    assert BENCHMARKS.get("gta2cs") is GTA2CS and BENCHMARKS.get("synthia2cs") is SYNTHIA2CS
    assert (GTA2CS.source_kind, GTA2CS.subsets, GTA2CS.source_train_size) == ("gta5", ("19",),
                                                                              (1280, 720))
    assert (SYNTHIA2CS.source_kind, SYNTHIA2CS.subsets, SYNTHIA2CS.source_train_size) == (
        "synthia", ("16", "13"), (1280, 760))
    for b in (GTA2CS, SYNTHIA2CS):
        assert (b.target_train_size, b.eval_input_size, b.eval_label_size) == (
            (1024, 512), (1024, 512), (2048, 1024))
        assert b.num_classes == 19 and b.convention == "A" and b.crop_size is None
        assert b.align_corners is False
    assert MINICITY_GTA2CS.subsets == ("19",) and MINICITY_SYNTHIA2CS.subsets == ("16", "13")
    mc = MINICITY_GTA2CS.minicity
    assert MINICITY_GTA2CS.eval_label_size == (mc.width, mc.height) == (512, 256)
    assert MINICITY_GTA2CS.eval_input_size == (256, 128)
    with pytest.raises(dataclasses.FrozenInstanceError):
        GTA2CS.version = 2  # type: ignore[misc]


def test_hash_covers_every_number_changing_field_but_not_the_description():
    from udabench.benchmarks import protocol_fields

    payload = {f.name: getattr(GTA2CS, f.name) for f in protocol_fields()}
    assert {f.name for f in dataclasses.fields(GTA2CS)} - set(payload) == {"description", "run_defaults"}
    expect = hashlib.sha256(json.dumps(payload, sort_keys=True, default=list).encode()).hexdigest()
    assert GTA2CS.hash() == expect[:12]
    assert dataclasses.replace(GTA2CS, description="other words").hash() == GTA2CS.hash()
    changes = dict(version=3, source_train_size=(1280, 640), crop_size=(512, 512),
                   convention="B", subsets=("19", "16"), eval_input_size=(2048, 1024),
                   align_corners=True, flip_p=0.5, scale_range=(0.5, 2.0), source_subdir="GTA",
                   interpolation="bilinear", val_images=499)
    hashes = {dataclasses.replace(GTA2CS, **{k: v}).hash() for k, v in changes.items()}
    assert len(hashes) == len(changes) and GTA2CS.hash() not in hashes
    assert len({b.hash() for b in (GTA2CS, SYNTHIA2CS, MINICITY_GTA2CS, MINICITY_SYNTHIA2CS)}) == 4
    shifted = MINICITY_GTA2CS.with_overrides({"minicity": {"noise": 5.0}})
    assert shifted.hash() != MINICITY_GTA2CS.hash() and shifted.minicity.noise == 5.0


def test_overrides_are_checked():
    with pytest.raises(ConfigError, match="benchmarks.gta2cs.crop_sise .*did you mean 'crop_size'"):
        GTA2CS.with_overrides({"crop_sise": [512, 512]})
    assert GTA2CS.with_overrides({"crop_size": [512, 512]}).crop_size == (512, 512)
    with pytest.raises(ConfigError, match="subsets"):
        GTA2CS.with_overrides({"subsets": ["17"]})
    with pytest.raises(ConfigError, match="eval_label_size"):
        MINICITY_GTA2CS.with_overrides({"eval_label_size": [1024, 512]})


def test_summary_row():
    row = GTA2CS.summary_row()
    assert row[0] == "gta2cs" and row[2] == "GTA5 -> Cityscapes" and "mIoU19" in row[3]
    assert "1280x720" in row[4] and row[5].endswith(GTA2CS.hash())


def test_missing_roots_raise_one_error_with_trees_and_sources(tmp_path, tiny_cityscapes):
    with pytest.raises(DataError) as err:
        GTA2CS.datasets(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "from_games" in msg and "cityscapes-dataset.com" in msg
    assert str(tmp_path / "gta5" / "images") in msg and "leftImg8bit" in msg
    shutil.copytree(tiny_cityscapes, tmp_path / "cityscapes")
    with pytest.raises(DataError) as err:
        SYNTHIA2CS.datasets(tmp_path)
    assert "synthia-dataset.net" in str(err.value) and "cityscapes-dataset" not in str(err.value)


@pytest.fixture
def data_root(tmp_path, tiny_gta5, tiny_synthia, tiny_cityscapes):
    for name, src in (("gta5", tiny_gta5), ("synthia", tiny_synthia), ("cityscapes", tiny_cityscapes)):
        shutil.copytree(src, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("bench", [GTA2CS, SYNTHIA2CS])
def test_datasets_follow_the_spec(bench: Benchmark, data_root):
    small = bench.with_overrides({**SMALL, "crop_size": [16, 8]})
    source, target, val = small.datasets(data_root)
    s = source[0]
    assert s["image"].shape == (3, 8, 16) and s["label"].shape == (8, 16) and "geometry" in s
    assert s["geometry"]["full_size"] == (16, 32)
    t = target[0]
    assert "label" not in t and not target.with_labels and t["image"].shape == (3, 8, 16)
    v = val[0]
    assert v["image"].shape == (3, 16, 32) and v["label"].shape == (32, 64)  # full-res labels
    oracle = small.target_train_labelled(data_root)
    assert oracle.with_labels and oracle[0]["label"].shape == (8, 16)


def test_minicity_spec_generates_on_first_use(tmp_path):
    tiny = MINICITY_GTA2CS.with_overrides({
        **SMALL, "minicity": dict(height=32, width=64, n_source=4, n_target_train=4, n_target_val=3)})
    source, target, val = tiny.datasets(tmp_path)
    assert (len(source), len(target), len(val)) == (4, 4, 3)
    assert source.kind == "gta5" and val[0]["label"].shape == (32, 64)
    again = tiny.datasets(tmp_path)[0]
    assert again.root == source.root  # generated once, found the second time
