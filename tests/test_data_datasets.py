"""Datasets on tiny trees in the official layouts, and every kind of bad input."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from udabench.commands.data import data as data_group
from udabench.data import TrainTransform, build_dataset, cityscapes, gta5, synthia
from udabench.errors import DataError
from udabench.taxonomy import CLASSES

# Hand-written Cityscapes labelId -> trainId, independent of taxonomy's lookup tables.
_LABEL_TO_TRAIN = {c.label_id: c.train_id for c in CLASSES}


def _expected_from_label_ids(ids: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda v: _LABEL_TO_TRAIN.get(int(v), 255))(ids).astype(np.uint8)


def test_gta5_samples_and_label_mapping(tiny_gta5):
    ds = gta5(tiny_gta5, manifest=None)
    assert len(ds) == 6 and ds.ids == [f"{i:05d}" for i in range(1, 7)]
    s = ds[2]
    assert set(s) == {"image", "label", "id", "index"} and s["id"] == "00003" and s["index"] == 2
    assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, 32, 64)
    assert s["label"].dtype == torch.uint8 and s["label"].shape == (32, 64)
    # Pillow without .convert() gives palette indices: an independent decoder.
    ids = np.asarray(Image.open(tiny_gta5 / "labels" / "00003.png"))
    assert np.array_equal(s["label"].numpy(), _expected_from_label_ids(ids))
    rgb = np.asarray(Image.open(tiny_gta5 / "images" / "00003.png").convert("RGB"))
    assert np.array_equal(s["image"].permute(1, 2, 0).numpy(), rgb)


def test_synthia_red_channel_mapping_by_hand(tiny_synthia, copy_tree, png):
    root = copy_tree(tiny_synthia)
    red = np.zeros((32, 64), np.uint16)
    # SYNTHIA ids 3 road, 4 sidewalk, 2 building, 8 car, 0 void, 13 parking, 22 lane marking.
    for col, sid in enumerate([3, 4, 2, 8, 0, 13, 22, 1]):
        red[:, col * 8:(col + 1) * 8] = sid
    label = np.stack([red, np.full_like(red, 500), np.zeros_like(red)], -1)  # instance ids in G
    png.rgb16(root / "GT" / "LABELS" / "0000000.png", label)
    out = synthia(root, manifest=None)[0]["label"]
    expected = [0, 1, 2, 13, 255, 255, 255, 10]
    assert [int(out[0, c * 8]) for c in range(8)] == expected
    assert len(synthia(root, manifest=None)) == 6


def test_cityscapes_views(tiny_cityscapes):
    train = cityscapes(tiny_cityscapes, "train", manifest=None)
    assert len(train) == 6 and not train.with_labels
    s = train[0]
    assert "label" not in s and s["image"].shape == (3, 32, 64)
    assert list(tiny_cityscapes.glob(f"leftImg8bit/train/*/{s['id']}_leftImg8bit.png"))
    oracle = cityscapes(tiny_cityscapes, "train", with_labels=True, manifest=None)
    assert "label" in oracle[0] and oracle.ids == train.ids
    val = cityscapes(tiny_cityscapes, "val", manifest=None)
    v = val[0]
    assert v["label"].shape == v["image"].shape[1:] == (32, 64)
    path = next(tiny_cityscapes.glob(f"gtFine/val/*/{v['id']}_gtFine_labelIds.png"))
    assert np.array_equal(v["label"].numpy(), _expected_from_label_ids(np.asarray(Image.open(path))))


def test_augmentation_follows_the_key_seed(tiny_gta5):
    ds = gta5(tiny_gta5, transform=TrainTransform(size=(24, 48), crop=(16, 16)), manifest=None)
    a, b = ds[(1, 123)], ds[(1, 123)]
    assert torch.equal(a["image"], b["image"]) and a["geometry"] == b["geometry"]
    geos = {str(ds[(1, s)]["geometry"]) for s in range(12)}
    assert len(geos) > 4


# -- bad inputs -------------------------------------------------------------------------------


def test_missing_root_names_tree_and_source(tmp_path):
    with pytest.raises(DataError) as err:
        gta5(tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "images/00001.png" in msg
    assert "download.visinf.tu-darmstadt.de/data/from_games" in msg and "\n" not in msg
    with pytest.raises(DataError, match="cityscapes-dataset.com"):
        cityscapes(tmp_path / "cs", "val")
    with pytest.raises(DataError, match="synthia-dataset.net"):
        synthia(tmp_path / "syn")


def test_wrong_folder_names(tiny_gta5, tiny_cityscapes, copy_tree):
    root = copy_tree(tiny_gta5)
    (root / "images").rename(root / "Images")
    with pytest.raises(DataError, match="found 'Images': rename it to 'images'"):
        gta5(root, manifest=None)
    cs = copy_tree(tiny_cityscapes)
    (cs / "gtFine").rename(cs / "gtfine")
    with pytest.raises(DataError, match=r"gtFine.* not found"):
        cityscapes(cs, "val", manifest=None)
    cityscapes(cs, "train", manifest=None)  # the label-free view does not need gtFine


def test_empty_folder(tiny_gta5, copy_tree):
    root = copy_tree(tiny_gta5)
    for p in (root / "labels").glob("*.png"):
        p.unlink()
    with pytest.raises(DataError, match=f"no PNG files in {root / 'labels'}"):
        gta5(root, manifest=None)


def test_image_without_label(tiny_gta5, copy_tree):
    root = copy_tree(tiny_gta5)
    (root / "labels" / "00004.png").unlink()
    with pytest.raises(DataError, match=r"1 GTA5 images have no label .*labels/00004.png"):
        gta5(root, manifest=None)


def test_size_mismatch_resizes_label_with_nearest(tiny_gta5, copy_tree, png):
    root = copy_tree(tiny_gta5)
    big = np.random.default_rng(0).integers(0, 34, (64, 128)).astype(np.uint8)
    png.palette(root / "labels" / "00002.png", big)
    label = gta5(root, manifest=None)[1]["label"]
    assert label.shape == (32, 64)
    # halving with pixel-centre nearest picks rows/cols 1, 3, 5, ...
    assert np.array_equal(label.numpy(), _expected_from_label_ids(big[1::2, 1::2]))


@pytest.mark.parametrize("which", ["images", "labels"])
def test_corrupt_png_names_the_file(tiny_gta5, copy_tree, png, which):
    root = copy_tree(tiny_gta5)
    png.truncate(root / which / "00005.png")
    ds = gta5(root, manifest=None)
    ds[0]
    with pytest.raises(DataError, match=f"{which}/00005.png"):
        ds[4]


def test_8bit_synthia_label_explains_16bit_requirement(tiny_synthia, copy_tree, png):
    root = copy_tree(tiny_synthia)
    png.u8(root / "GT" / "LABELS" / "0000001.png", np.full((32, 64, 3), 3))
    with pytest.raises(DataError, match=r"0000001.png is 3-channel 8-bit.*16-bit 3-channel"):
        synthia(root, manifest=None)[1]


def test_expanded_gta5_palette_is_rejected(tiny_gta5, copy_tree, png):
    root = copy_tree(tiny_gta5)
    png.u8(root / "labels" / "00001.png", np.full((32, 64, 3), 128))
    with pytest.raises(DataError, match="palette expanded"):
        gta5(root, manifest=None)[0]


def test_label_values_out_of_range(tiny_gta5, tiny_synthia, copy_tree, png):
    root = copy_tree(tiny_gta5)
    ids = np.full((32, 64), 7, np.uint8)
    ids[3, 3], ids[4, 4] = 40, 255  # 255 (ignore) is tolerated, 40 is not a labelId
    png.palette(root / "labels" / "00006.png", ids)
    with pytest.raises(DataError, match=r"00006.png holds values \[40\] outside 0..33"):
        gta5(root, manifest=None)[5]


@pytest.mark.parametrize("unknown", [23, 24, 255, 300, 1000, 65535])
def test_synthia_ids_outside_the_table_map_to_ignore(tiny_synthia, copy_tree, png, unknown):
    """The protocol maps SYNTHIA ids outside its table (0..22) to ignore instead of failing."""
    syn = copy_tree(tiny_synthia)
    red = np.full((32, 64, 3), 3, np.uint16)  # road everywhere ...
    red[:4, :8, 0] = unknown  # ... except one block of an id the table does not know
    red[5, 5, 0] = 22  # lane marking: in the table, ignored
    png.rgb16(syn / "GT" / "LABELS" / "0000002.png", red)
    label = synthia(syn, manifest=None)[2]["label"]
    expected = np.zeros((32, 64), np.uint8)
    expected[:4, :8] = 255
    expected[5, 5] = 255
    assert np.array_equal(label.numpy(), expected)


def test_unknown_kind_and_split(tiny_cityscapes):
    with pytest.raises(DataError, match="unknown dataset 'gta6'"):
        build_dataset("gta6", tiny_cityscapes)
    with pytest.raises(DataError, match="unknown Cityscapes split 'test'"):
        cityscapes(tiny_cityscapes, "test", manifest=None)


def test_orphan_labels_do_not_break_loading(tiny_gta5, copy_tree):
    root = copy_tree(tiny_gta5)
    shutil.copy(root / "labels" / "00001.png", root / "labels" / "00099.png")
    assert len(gta5(root, manifest=None)) == 6


@pytest.mark.parametrize("kind", ["gta5", "synthia"])
def test_padding_and_deferred_id_mapping(kind, tiny_gta5, tiny_synthia):
    """Labels are mapped to trainIds after the transform moved them: padding must stay 255 and
    the image area must equal the directly mapped label."""
    root = tiny_gta5 if kind == "gta5" else tiny_synthia
    plain = build_dataset(kind, root, manifest=None)[2]["label"]
    t = TrainTransform(size=(32, 64), crop=(40, 80), flip_p=0.0)
    out = build_dataset(kind, root, transform=t, manifest=None)[(2, 0)]["label"]
    assert out.dtype == torch.uint8 and out.shape == (40, 80)
    assert torch.equal(out[:32, :64], plain)
    assert (out[32:] == 255).all() and (out[:, 64:] == 255).all()


@pytest.mark.parametrize("color_type,depth", [(3, 1), (3, 2), (3, 4), (0, 1), (0, 2), (0, 4)])
@pytest.mark.parametrize("interlace", [False, True])
def test_labels_with_fewer_bits_decode_like_8_bit(tiny_gta5, tiny_cityscapes, copy_tree,
                                                 color_type, depth, interlace):
    """GTA5 (palette) and Cityscapes (grey) labels stored with 1/2/4 bits per pixel give the ids
    they store: verify passes them and the dataset maps them like 8-bit files."""
    from pngkit import encode_png
    from udabench.data.verify import verify_dataset

    ids = np.random.default_rng(depth).integers(0, 2 ** depth, (32, 64))  # labelIds that fit
    palette = np.zeros((2 ** depth, 3)) if color_type == 3 else None
    data = encode_png(ids[..., None], color_type, depth, palette, interlace)
    gta = copy_tree(tiny_gta5)
    (gta / "labels" / "00002.png").write_bytes(data)
    assert np.array_equal(gta5(gta, manifest=None)[1]["label"].numpy(), _expected_from_label_ids(ids))
    cs = copy_tree(tiny_cityscapes)
    path = next((cs / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    path.write_bytes(data)
    val = cityscapes(cs, "val", manifest=None)
    stem = path.name.replace("_gtFine_labelIds.png", "")
    assert np.array_equal(val[val.ids.index(stem)]["label"].numpy(), _expected_from_label_ids(ids))
    for kind, root in (("gta5", gta), ("cityscapes", cs)):
        report = verify_dataset(kind, root)
        assert not report.errors, report.errors


def _literal_folders(kind: str) -> list[str]:
    """Every folder of the layout that has a fixed name, as a path below the root."""
    from udabench.data import get_dataset

    spec = get_dataset(kind)
    out = []
    for pattern in (spec.images, spec.labels):
        parts = []
        for folder in pattern.folders:
            if folder == "*":
                break
            parts.append(spec.splits[-1] if folder == "{split}" else folder)
            out.append("/".join(parts))
    return sorted(set(out))


@pytest.mark.parametrize("kind,missing", [(k, f) for k in ("gta5", "synthia", "cityscapes")
                                          for f in _literal_folders(k)])
def test_a_missing_part_is_named_never_renamed_into_another_part(kind, missing, tiny_gta5,
                                                                 tiny_synthia, tiny_cityscapes,
                                                                 copy_tree):
    """Only labels/ extracted: the message says images/ is missing (never "rename labels to
    images"), names what is there, and where the data comes from."""
    root = copy_tree({"gta5": tiny_gta5, "synthia": tiny_synthia, "cityscapes": tiny_cityscapes}[kind])
    shutil.rmtree(root / missing)
    split = "val" if kind == "cityscapes" else "train"
    with pytest.raises(DataError) as err:
        build_dataset(kind, root, split, with_labels=True, manifest=None)
    msg = str(err.value)
    assert "\n" not in msg and "rename" not in msg, msg
    assert f"folder {root / missing} not found" in msg, msg
    assert "udabench never downloads datasets" in msg
    siblings = [p.name for p in (root / missing).parent.iterdir() if p.is_dir()]
    if siblings:
        assert "but no" in msg and all(s in msg for s in siblings), msg


def test_pointing_at_the_data_root_names_the_dataset_folder(tiny_gta5, copy_tree):
    data = copy_tree(tiny_gta5).parent / "data"
    data.mkdir()
    shutil.copytree(tiny_gta5, data / "gta5")
    with pytest.raises(DataError, match=r"found .*data/gta5/images: is .*data/gta5 the GTA5 folder"):
        gta5(data, manifest=None)


def test_other_image_formats_are_named(tiny_gta5, copy_tree):
    root = copy_tree(tiny_gta5)
    for p in (root / "images").iterdir():
        p.rename(p.with_suffix(".jpg"))
    with pytest.raises(DataError, match=r"no PNG files in .*images \(it holds 6 other files, e.g. "
                                        r"00001.jpg; udabench reads PNG"):
        gta5(root, manifest=None)


def test_shipped_settings_name_the_folders_the_code_uses():
    """udabench.toml's [paths] comments show each dataset's real folder below the data root."""
    from pathlib import Path

    from udabench.data import get_dataset
    from udabench.data.layouts import KINDS

    text = (Path(__file__).parents[1] / "udabench.toml").read_text()
    paths = text[text.index("[paths]"): text.index("[train]")]
    for name in KINDS:  # the built-in datasets (plug-ins registered by tests are not shipped)
        assert f"<data_root>/{get_dataset(name).subdir}/" in paths
    for wrong in ("GTA5", "SYNTHIA-RAND-CITYSCAPES/", "<data_root>/SYNTHIA"):
        assert f"<data_root>/{wrong}" not in paths


def test_unknown_dataset_names_suggest_the_registered_one():
    result = CliRunner().invoke(data_group, ["verify", "GTA5", "--root", "."])
    assert isinstance(result.exception, DataError)
    assert "unknown dataset 'GTA5' (did you mean 'gta5'?)" in str(result.exception)
