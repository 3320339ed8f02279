"""`udabench data prepare`: manifest contents, defect handling, cache, resume after interruption."""
from __future__ import annotations

import json
import os
import shutil
import struct
import zlib

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


# -- manifests follow the files --------------------------------------------------------------------
def test_entries_record_size_and_mtime(tiny_gta5, copy_tree):
    root = copy_tree(tiny_gta5)
    man = prepare_dataset("gta5", root)
    for e in man.entries:
        for rel, stat in ((e.image, e.image_stat), (e.label, e.label_stat)):
            st = (root / rel).stat()
            assert stat == (st.st_size, st.st_mtime_ns)
    assert all(e.image_sha256 is None for e in man.entries) and not man.checksums


def test_a_replaced_corrupt_label_is_checked_again(tiny_gta5, copy_tree, monkeypatch, capsys):
    root = copy_tree(tiny_gta5)
    good = (root / "labels" / "00003.png").read_bytes()
    (root / "labels" / "00003.png").write_bytes(good[: len(good) // 2])
    man = prepare_dataset("gta5", root, opts=PrepareOptions(chunk_size=1))
    assert _status(man)["00003"] == "corrupt" and "00003" not in gta5(root).ids
    (root / "labels" / "00003.png").write_bytes(good)  # the user restores the file
    with pytest.raises(DataError, match=r"no longer matches GTA5 train .*labels/00003.png changed"):
        gta5(root)
    real, calls = prep.process_chunk, []
    monkeypatch.setattr(prep, "process_chunk", lambda chunk, *a: calls.append(
        [i.id for i in chunk[1]]) or real(chunk, *a))
    from rich.console import Console

    man = prepare_dataset("gta5", root, opts=PrepareOptions(chunk_size=1), console=Console())
    assert calls == [["00003"]]  # only the changed pair was checked again
    assert "up to date" not in capsys.readouterr().out
    assert _status(man)["00003"] == "ok" and "00003" in gta5(root).ids


def _touch(root, rel):
    st = (root / rel).stat()
    os.utime(root / rel, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def _rewrite_same_size(root, rel):
    data = bytearray((root / rel).read_bytes())
    (root / rel).write_bytes(bytes(data))  # same bytes, new mtime


CHANGES = {  # what happens -> (how, the file the message names, the ids checked again)
    "image touched": (lambda r: _touch(r, "images/00002.png"), "images/00002.png changed", ["00002"]),
    "label rewritten": (lambda r: _rewrite_same_size(r, "labels/00005.png"),
                        "labels/00005.png changed", ["00005"]),
    "image added": (lambda r: [shutil.copy(r / f / "00001.png", r / f / "00009.png")
                               for f in ("images", "labels")], "images/00009.png added", ["00009"]),
    "pair removed": (lambda r: [(r / f / "00004.png").unlink() for f in ("images", "labels")],
                     "images/00004.png removed", []),
    "label removed": (lambda r: (r / "labels" / "00006.png").unlink(),
                      "label labels/00006.png removed", ["00006"]),
    "label became a link loop": (lambda r: ((r / "labels" / "00006.png").unlink(),
                                            (r / "labels" / "00006.png").symlink_to("00006.png")),
                                 "labels/00006.png is now unusable", ["00006"]),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_every_kind_of_change_makes_the_manifest_stale_until_prepare(tiny_gta5, copy_tree,
                                                                     monkeypatch, change):
    root = copy_tree(tiny_gta5)
    prepare_dataset("gta5", root, opts=PrepareOptions(chunk_size=1))
    how, named, rechecked = CHANGES[change]
    how(root)
    with pytest.raises(DataError) as err:
        gta5(root)
    assert named in str(err.value) and "\n" not in str(err.value)
    real, calls = prep.process_chunk, []
    monkeypatch.setattr(prep, "process_chunk", lambda chunk, *a: calls.extend(
        i.id for i in chunk[1]) or real(chunk, *a))
    man = prepare_dataset("gta5", root, opts=PrepareOptions(chunk_size=1))
    assert calls == rechecked
    assert gta5(root).ids == [e.id for e in man.entries if e.status in ("ok", "resized_label")]
    reference = prepare_dataset("gta5", root, root / "fresh", PrepareOptions(chunk_size=1))
    key = lambda m: sorted((e.id, e.status, e.image, e.label, e.image_stat, e.label_stat,  # noqa: E731
                            e.class_counts) for e in m.entries)
    assert key(man) == key(reference)  # the update equals a prepare from scratch


def test_checksum_and_force(tiny_gta5, copy_tree, monkeypatch, png):
    import hashlib

    root = copy_tree(tiny_gta5)
    man = prepare_dataset("gta5", root, opts=PrepareOptions(checksum=True))
    assert man.checksums
    for e in man.entries:
        assert e.label_sha256 == hashlib.sha256((root / e.label).read_bytes()).hexdigest()
    # A change that keeps size and modification time: only --checksum can see it.
    path = root / "labels" / "00002.png"
    st = path.stat()
    png.palette(root / "new.png", np.full((32, 64), 26))  # every pixel a car
    new = (root / "new.png").read_bytes()
    (root / "new.png").unlink()
    pad = st.st_size - len(new) - 12  # a private ancillary chunk restores the old size
    assert pad >= 0
    chunk = struct.pack(">I", pad) + b"prVt" + b"x" * pad + struct.pack(">I", zlib.crc32(
        b"prVt" + b"x" * pad))
    iend = new.rindex(b"IEND") - 4
    path.write_bytes(new[:iend] + chunk + new[iend:])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    assert prepare_dataset("gta5", root).entries[1].class_counts == man.entries[1].class_counts
    checked = prepare_dataset("gta5", root, opts=PrepareOptions(checksum=True))
    assert checked.entries[1].class_counts[13] == 64 * 32  # the new content
    assert checked.entries[1].label_sha256 != man.entries[1].label_sha256
    real, calls = prep.process_chunk, []
    monkeypatch.setattr(prep, "process_chunk", lambda chunk, *a: calls.append(chunk[0]) or
                        real(chunk, *a))
    prepare_dataset("gta5", root)
    assert calls == []  # up to date
    prepare_dataset("gta5", root, force=True)
    assert calls == [0]  # everything again
    result = CliRunner().invoke(data, ["prepare", "gta5", "--root", str(root), "--force",
                                       "--checksum", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert Manifest.load(default_manifest_path(root)).checksums


def test_a_manifest_written_elsewhere_is_used_through_the_environment(tiny_gta5, copy_tree,
                                                                      monkeypatch, png):
    from udabench.data.manifest import configure_manifests

    root = copy_tree(tiny_gta5)
    png.truncate(root / "images" / "00004.png")  # prepare records it; runs must skip it
    out = root.parent / "elsewhere"
    result = CliRunner().invoke(data, ["prepare", "gta5", "--root", str(root), "--out", str(out),
                                       "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "UDABENCH_MANIFEST_GTA5=" in result.output
    assert not (root / "udabench_prepared").exists()  # the dataset folder is left as it was
    with pytest.raises(DataError, match="00004.png"):  # without the manifest: no way around it
        [gta5(root)[i] for i in range(6)]
    monkeypatch.setenv("UDABENCH_MANIFEST_GTA5", str(out / "manifest.json"))
    ds = gta5(root)
    assert ds.manifest_path == out / "manifest.json" and "00004" not in ds.ids and len(ds) == 5
    monkeypatch.setenv("UDABENCH_MANIFEST_GTA5", str(out))  # the folder works too
    assert gta5(root).manifest_path == out / "manifest.json"
    other = copy_tree(tiny_gta5)
    with pytest.raises(DataError, match=r"UDABENCH_MANIFEST_GTA5 points at .* the manifest of "
                                        r".*, not of this GTA5 folder") as err:
        gta5(other)
    assert "\n" not in str(err.value)
    monkeypatch.setenv("UDABENCH_MANIFEST_GTA5", str(out / "nope.json"))
    with pytest.raises(DataError, match=r"nope.json, which does not exist; write it with "
                                        r"`udabench data prepare gta5"):
        gta5(root)
    monkeypatch.delenv("UDABENCH_MANIFEST_GTA5")
    try:
        configure_manifests({"gta5": out / "manifest.json"})
        assert gta5(root).manifest_path == out / "manifest.json"
        assert gta5(root, manifest=None).manifest_path is None  # explicit beats configured
    finally:
        configure_manifests({})
    with pytest.raises(DataError, match="unknown dataset 'gta6'"):
        configure_manifests({"gta6": out})
