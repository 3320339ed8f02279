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
