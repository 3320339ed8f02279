"""`udabench data verify` through click's CliRunner on the `data` group, good and bad trees."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from udabench.commands.data import data
from udabench.data.verify import verify_dataset
from udabench.errors import DataError


def _verify(*args: str):
    return CliRunner().invoke(data, ["verify", *args, "--workers", "1"])


@pytest.mark.parametrize("kind", ["gta5", "synthia", "cityscapes"])
def test_clean_trees_pass(kind, tiny_gta5, tiny_synthia, tiny_cityscapes):
    root = {"gta5": tiny_gta5, "synthia": tiny_synthia, "cityscapes": tiny_cityscapes}[kind]
    result = _verify(kind, "--root", str(root))
    assert result.exit_code == 0, result.output
    assert "passed verification" in result.output and "64x32" in result.output
    report = verify_dataset(kind, root)
    assert not report.problems
    n = 6
    assert report.splits["train"] == {"images": n, "labels": n, "pairs": n}
    if kind == "cityscapes":
        assert report.splits["val"]["pairs"] == n


def test_missing_root_and_wrong_names_raise_one_data_error(tmp_path, tiny_synthia, copy_tree):
    result = _verify("gta5", "--root", str(tmp_path / "absent"))
    assert isinstance(result.exception, DataError)
    assert "from_games" in str(result.exception)
    root = copy_tree(tiny_synthia)
    (root / "GT" / "LABELS").rename(root / "GT" / "labels")
    result = _verify("synthia", "--root", str(root))
    assert isinstance(result.exception, DataError)
    assert "found 'labels': rename it to 'LABELS'" in str(result.exception)


def test_default_root_comes_from_the_data_root(monkeypatch, tmp_path, tiny_gta5):
    monkeypatch.setenv("UDABENCH_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_gta5, tmp_path / "gta5")
    result = _verify("gta5")
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "gta5") in result.output.replace("\n", "")


def test_empty_folder(tiny_cityscapes, copy_tree):
    root = copy_tree(tiny_cityscapes)
    for p in (root / "leftImg8bit" / "val").rglob("*.png"):
        p.unlink()
    result = _verify("cityscapes", "--root", str(root))
    assert isinstance(result.exception, DataError) and "no PNG files" in str(result.exception)


def test_missing_labels_list_first_ten_and_count(tiny_gta5, copy_tree):
    root = copy_tree(tiny_gta5)
    for i in range(12):  # twelve extra images without labels
        shutil.copy(root / "images" / "00001.png", root / "images" / f"{100 + i:05d}.png")
    result = _verify("gta5", "--root", str(root))
    msg = str(result.exception)
    assert isinstance(result.exception, DataError) and "\n" not in msg
    assert "12 problem(s) (first 10)" in msg
    assert str(root / "labels" / "00109.png") in msg and "00110.png" not in msg
    assert "FAIL" in result.output


def test_size_mismatch_is_a_warning_naming_the_file(tiny_gta5, copy_tree, png):
    root = copy_tree(tiny_gta5)
    png.palette(root / "labels" / "00002.png", np.full((30, 64), 7))
    result = _verify("gta5", "--root", str(root))
    assert result.exit_code == 0, result.output
    assert "WARN" in result.output and "00002.png" in result.output


def test_corrupt_files_fail_and_name_them(tiny_gta5, copy_tree, png):
    root = copy_tree(tiny_gta5)
    png.truncate(root / "images" / "00003.png")
    png.flip_byte(root / "labels" / "00005.png")  # a CRC error: libpng would segfault on it
    report = verify_dataset("gta5", root)
    corrupt = sorted(p.path.name for p in report.by_category("corrupt"))
    assert corrupt == ["00003.png", "00005.png"]
    with pytest.raises(DataError, match=r"2 problem\(s\).*corrupt: .*00003.png"):
        report.raise_if_failed()
    assert not verify_dataset("gta5", root, quick=True).by_category("corrupt")  # headers are fine


def test_8bit_synthia_label_fails_explaining_16bit(tiny_synthia, copy_tree, png):
    root = copy_tree(tiny_synthia)
    png.u8(root / "GT" / "LABELS" / "0000004.png", np.full((32, 64, 3), 3))
    report = verify_dataset("synthia", root)
    [problem] = report.by_category("wrong encoding")
    assert problem.path.name == "0000004.png" and "16-bit 3-channel" in problem.detail
    assert report.label_encodings == {"rgb 16-bit": 5, "rgb 8-bit": 1}


def test_out_of_range_values_fail(tiny_cityscapes, copy_tree, png):
    root = copy_tree(tiny_cityscapes)
    path = next((root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    ids = np.full((32, 64), 7)
    ids[5, 5] = 77
    png.u8(path, ids)
    report = verify_dataset("cityscapes", root)
    [problem] = report.by_category("out of range")
    assert problem.path == path and "[77]" in problem.detail
    assert not verify_dataset("cityscapes", root, quick=True).errors  # values need decoding


def test_workers_give_the_same_report(tiny_gta5, copy_tree, png):
    root = copy_tree(tiny_gta5)
    png.truncate(root / "labels" / "00001.png")
    a, b = verify_dataset("gta5", root, workers=1), verify_dataset("gta5", root, workers=2)
    assert [(p.category, p.path) for p in a.problems] == [(p.category, p.path) for p in b.problems]
    assert a.image_sizes == b.image_sizes


# -- labels that decode but cannot be right --------------------------------------------------------
from udabench.taxonomy import CLASSES, LABEL_ID_COLORS, LABEL_ID_TO_TRAIN_ID  # noqa: E402

VOID_LABEL_IDS = [i for i in range(34) if LABEL_ID_TO_TRAIN_ID[i] == 255]  # 0..6, 9, 10, ...
SYNTHIA_VOID_IDS = [0, 13, 14, 22]  # in SYNTHIA's table, but not classes


def _void_label(kind: str, rng, how: str) -> np.ndarray:
    ids = VOID_LABEL_IDS if kind != "synthia" else SYNTHIA_VOID_IDS
    if how == "zero":
        return np.zeros((32, 64), np.uint16)
    if how == "one void id":
        return np.full((32, 64), ids[-1], np.uint16)
    return rng.choice(ids, (32, 64)).astype(np.uint16)  # a mix of void ids


def _write_label(kind: str, root, index: int, ids: np.ndarray, png) -> object:
    if kind == "gta5":
        path = root / "labels" / f"{index + 1:05d}.png"
        png.palette(path, ids)
    elif kind == "synthia":
        path = root / "GT" / "LABELS" / f"{index:07d}.png"
        png.rgb16(path, np.stack([ids, np.zeros_like(ids), np.zeros_like(ids)], -1))
    else:
        path = sorted((root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))[index]
        png.u8(path, ids)
    return path


@pytest.mark.parametrize("how", ["zero", "one void id", "mix"])
@pytest.mark.parametrize("kind", ["gta5", "synthia", "cityscapes"])
def test_labels_with_no_valid_pixel_are_warned_about(kind, how, tiny_gta5, tiny_synthia,
                                                     tiny_cityscapes, copy_tree, png):
    root = copy_tree({"gta5": tiny_gta5, "synthia": tiny_synthia, "cityscapes": tiny_cityscapes}[kind])
    rng = np.random.default_rng(len(how))
    bad = {_write_label(kind, root, i, _void_label(kind, rng, how), png) for i in (1, 4)}
    report = verify_dataset(kind, root)
    assert {p.path for p in report.by_category("no valid pixel")} == bad
    assert not report.errors  # a warning: the run can still skip them
    result = _verify(kind, "--root", str(root))
    assert result.exit_code == 0 and "no valid pixel" in result.output and "WARN" in result.output
    assert "passed verification with" in result.output


@pytest.mark.parametrize("channel", [1, 2])
def test_synthia_ids_in_the_wrong_channel_are_suspicious(tiny_synthia, copy_tree, png, channel):
    root = copy_tree(tiny_synthia)
    label = np.zeros((32, 64, 3), np.uint16)
    label[..., channel] = np.random.default_rng(channel).choice([1, 2, 3, 8], (32, 64))
    png.rgb16(root / "GT" / "LABELS" / "0000003.png", label)
    report = verify_dataset("synthia", root)
    [problem] = report.by_category("suspicious label")
    assert problem.path.name == "0000003.png"
    assert f"the {('green', 'blue')[channel - 1]} channel" in problem.detail
    assert "wrong channel" in problem.detail


def test_synthia_ids_outside_the_table_are_counted_per_file_and_in_total(tiny_synthia, copy_tree,
                                                                        png):
    root = copy_tree(tiny_synthia)
    rng = np.random.default_rng(3)
    expected = {}
    for index, n in ((0, 5), (2, 40), (5, 2048)):  # 2048 = every pixel: instance ids in red
        label = np.zeros((32, 64, 3), np.uint16)
        label[..., 0] = 3  # road
        flat = label[..., 0].reshape(-1)
        flat[rng.choice(flat.size, n, replace=False)] = rng.integers(23, 65536, n)
        png.rgb16(root / "GT" / "LABELS" / f"{index:07d}.png", label)
        expected[f"{index:07d}.png"] = n
    report = verify_dataset("synthia", root)
    found = {p.path.name: p.detail for p in report.by_category("unknown ids")}
    assert sorted(found) == sorted(expected)
    for name, n in expected.items():
        assert found[name].startswith(f"{n} pixels (")
    assert report.unknown_pixels == sum(expected.values())
    suspicious = report.by_category("suspicious label")
    assert [p.path.name for p in suspicious] == ["0000005.png"] and "instance ids" in \
        suspicious[0].detail
    result = _verify("synthia", "--root", str(root))
    assert result.exit_code == 0 and f"{sum(expected.values())} pixels in all" in result.output


def test_gta5_renumbered_palette_is_suspicious(tiny_gta5, copy_tree):
    """An editor that re-indexes the palette keeps the colours and changes the indices: the
    indices are no longer labelIds, and the palette says so."""
    from PIL import Image

    root = copy_tree(tiny_gta5)
    path = root / "labels" / "00002.png"
    ids = np.array(Image.open(path))
    present = np.unique(ids)
    renumbered = np.searchsorted(present, ids).astype(np.uint8)  # indices 0, 1, 2, ...
    img = Image.fromarray(renumbered, mode="P")
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(present)] = [LABEL_ID_COLORS.get(int(i), (0, 0, 0)) for i in present]
    img.putpalette(palette.reshape(-1).tolist())
    img.save(path)
    report = verify_dataset("gta5", root)
    [problem] = report.by_category("suspicious label")
    assert problem.path == path and "not labelIds" in problem.detail
    assert not verify_dataset("gta5", copy_tree(tiny_gta5)).by_category("suspicious label")


def test_implausible_class_distribution_of_a_split(tiny_gta5, copy_tree, png):
    root = copy_tree(tiny_gta5)
    for i in range(4):  # most labels all void: the split is mostly void
        png.palette(root / "labels" / f"{i + 1:05d}.png", np.zeros((32, 64)))
    [problem] = verify_dataset("gta5", root).by_category("class distribution")
    assert "train:" in problem.detail and "void" in problem.detail
    road = copy_tree(tiny_gta5)
    for i in range(6):  # every label one class
        png.palette(road / "labels" / f"{i + 1:05d}.png", np.full((32, 64), CLASSES[0].label_id))
    [problem] = verify_dataset("gta5", road).by_category("class distribution")
    assert "'road' covers 100%" in problem.detail
    assert not verify_dataset("gta5", copy_tree(tiny_gta5)).by_category("class distribution")
