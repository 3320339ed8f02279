"""`udabench data prepare`: manifest contents, defect handling, cache, resume after interruption."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import udabench.data.prepare as prep
from udabench.commands.data import data
from udabench.data import cityscapes, gta5, synthia
from udabench.data.manifest import Manifest, default_manifest_path
from udabench.data.prepare import PrepareOptions, prepare_dataset
from udabench.data.transforms import resize_image, resize_label
from udabench.errors import DataError, UserError


def _status(manifest: Manifest) -> dict[str, str]:
    return {e.id: e.status for e in manifest.entries}


def test_manifest_pairs_sizes_and_class_counts(tiny_gta5, copy_tree):
    root = copy_tree(tiny_gta5)
    result = CliRunner().invoke(data, ["prepare", "gta5", "--root", str(root), "--workers", "1"])
    assert result.exit_code == 0, result.output
    man = Manifest.load(default_manifest_path(root))
    assert man.counts["ok"] == 6 and sum(man.counts.values()) == 6
    assert [e.image for e in man.entries][:2] == ["images/00001.png", "images/00002.png"]
    assert all(e.image_size == e.label_size == (64, 32) for e in man.entries)
    raw = gta5(root, manifest=None)
    counts = man.class_counts()
    for i in range(6):  # cross-check against the labels the dataset serves
        lab = raw[i]["label"].long()
        assert counts[i].tolist() == torch.bincount(lab[lab < 19], minlength=19).tolist()
    assert torch.equal(gta5(root).class_counts(), torch.from_numpy(counts))
    assert json.loads(default_manifest_path(root).read_text())["counts"]["ok"] == 6


def test_cache_at_training_size_is_served(tiny_gta5, copy_tree):
    root = copy_tree(tiny_gta5)
    prepare_dataset("gta5", root, opts=PrepareOptions(cache_size=(32, 16)))
    cached = gta5(root, cache_size=(32, 16))
    assert cached.label_is_train_id and len(cached) == 6
    full = gta5(root, manifest=None)[3]
    s = cached[3]
    assert s["image"].shape == (3, 16, 32)
    assert torch.equal(s["image"], resize_image(full["image"], (16, 32)))
    assert torch.equal(s["label"], resize_label(full["label"], (16, 32)))
    assert gta5(root, cache_size=(64, 32))[3]["image"].shape == (3, 32, 64)  # other size: originals


@pytest.mark.parametrize("mode", ["resize", "drop"])
def test_size_mismatch_resize_or_drop(tiny_gta5, copy_tree, png, mode):
    root = copy_tree(tiny_gta5)
    png.palette(root / "labels" / "00002.png", np.full((16, 32), 26))  # car everywhere, half size
    man = prepare_dataset("gta5", root, opts=PrepareOptions(on_mismatch=mode))
    entry = man.entries[1]
    assert entry.label_size == (32, 16) and entry.image_size == (64, 32)
    ds = gta5(root)
    if mode == "resize":
        assert entry.status == "resized_label" and "nearest" in entry.detail
        assert entry.class_counts[13] == 64 * 32 and len(ds) == 6
        assert ds[1]["label"].shape == (32, 64)
    else:
        assert entry.status == "dropped_size_mismatch" and len(ds) == 5 and "00002" not in ds.ids
    assert man.counts["resized_label" if mode == "resize" else "dropped_size_mismatch"] == 1


def test_defects_are_recorded_and_counted_never_silently_dropped(tiny_gta5, copy_tree, png):
    root = copy_tree(tiny_gta5)
    png.truncate(root / "images" / "00001.png")
    png.flip_byte(root / "labels" / "00003.png")
    (root / "labels" / "00004.png").unlink()
    ids = np.full((32, 64), 7)
    ids[0, 0] = 99
    png.palette(root / "labels" / "00005.png", ids)
    png.palette(root / "labels" / "00077.png", ids)  # a label without an image
    man = prepare_dataset("gta5", root)
    assert _status(man) == {"00001": "corrupt", "00002": "ok", "00003": "corrupt",
                            "00004": "missing_label", "00005": "label_out_of_range", "00006": "ok",
                            "00077": "orphan_label"}
    assert "00001.png" in man.entries[0].detail and not man.entries[0].image_ok
    assert "labels/00004.png not found" in man.entries[3].detail
    counts = man.counts
    assert (counts["corrupt"], counts["missing_label"], counts["label_out_of_range"],
            counts["orphan_label"], counts["ok"]) == (2, 1, 1, 1, 2)
    assert gta5(root).ids == ["00002", "00006"]  # the manifest decides, and says why


def test_synthia_wrong_encoding_recorded(tiny_synthia, copy_tree, png):
    root = copy_tree(tiny_synthia)
    png.u8(root / "GT" / "LABELS" / "0000003.png", np.full((32, 64, 3), 3))
    man = prepare_dataset("synthia", root)
    assert _status(man)["0000003"] == "wrong_encoding" and "16-bit" in man.entries[3].detail
    assert len(synthia(root)) == 5


def test_cityscapes_firewall_and_label_free_view(tiny_cityscapes, copy_tree):
    root = copy_tree(tiny_cityscapes)
    missing = next((root / "gtFine" / "train").rglob("*_labelIds.png"))
    missing.unlink()
    man = prepare_dataset("cityscapes", root, opts=PrepareOptions(cache_size=(32, 16)))
    train = [e for e in man.entries if e.split == "train"]
    val = [e for e in man.entries if e.split == "val"]
    assert all(e.class_counts is None for e in train)  # no target-train label statistics
    assert all(e.class_counts is not None for e in val) and len(val) == 6
    assert len(cityscapes(root, "train", cache_size=(32, 16))) == 6  # label-free: all images
    assert cityscapes(root, "train", cache_size=(32, 16))[0]["image"].shape == (3, 16, 32)
    assert len(cityscapes(root, "train", with_labels=True)) == 5
    v = cityscapes(root, "val", cache_size=(32, 16))[0]
    assert v["label"].shape == (32, 64)  # val never comes from the cache
    with pytest.raises(DataError, match="target firewall"):
        cityscapes(root, "train").class_counts()


def test_prepare_resumes_after_an_interruption(tiny_gta5, copy_tree, monkeypatch):
    reference = prepare_dataset("gta5", copy_tree(tiny_gta5), opts=PrepareOptions(chunk_size=2))
    root = copy_tree(tiny_gta5)
    real, calls = prep.process_chunk, []

    def interrupted(chunk, *args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(chunk[0])
        return real(chunk, *args)

    monkeypatch.setattr(prep, "process_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("gta5", root, opts=PrepareOptions(chunk_size=2))
    assert calls == [0, 1] and not default_manifest_path(root).exists()
    calls.clear()
    monkeypatch.setattr(prep, "process_chunk", lambda chunk, *a: calls.append(chunk[0]) or
                        real(chunk, *a))
    man = prepare_dataset("gta5", root, opts=PrepareOptions(chunk_size=2))
    assert calls == [2]  # only the chunk that was not done
    assert [e.__dict__ for e in man.entries] == [e.__dict__ for e in reference.entries]
    prepare_dataset("gta5", root, opts=PrepareOptions(chunk_size=2))
    assert calls == [2]  # up to date: nothing redone
    prepare_dataset("gta5", root, opts=PrepareOptions(chunk_size=2, on_mismatch="drop"))
    assert calls == [2, 0, 1, 2]  # another option: done afresh
    assert not (root / "udabench_prepared" / "parts").exists()


def test_workers_and_bad_options(tiny_gta5, copy_tree):
    root = copy_tree(tiny_gta5)
    one = prepare_dataset("gta5", root, root / "out1", PrepareOptions(chunk_size=2))
    two = prepare_dataset("gta5", root, root / "out2", PrepareOptions(chunk_size=2, workers=2))
    assert [e.__dict__ for e in one.entries] == [e.__dict__ for e in two.entries]
    assert (root / "out2" / "manifest.json").is_file()
    result = CliRunner().invoke(data, ["prepare", "gta5", "--root", str(root), "--cache-size", "big"])
    assert isinstance(result.exception, UserError) and "WIDTHxHEIGHT" in str(result.exception)
    with pytest.raises(DataError, match="manifest .* not found"):
        gta5(root, manifest=root / "nope.json")
