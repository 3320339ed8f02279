"""File-system oddities in dataset trees: every case loads correctly or gives one line naming the
entry (dataset, `data verify`, `data prepare`); never a traceback, a hang or a silent skip."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from udabench.commands.data import data
from udabench.data import build_dataset, gta5
from udabench.data.prepare import prepare_dataset
from udabench.data.verify import verify_dataset
from udabench.errors import DataError


def _make_loop(folder: Path, name: str) -> list[Path]:
    a, b = folder / name, folder / f"{name[:-4]}_twin.png"
    a.symlink_to(b.name)
    b.symlink_to(a.name)
    return [a, b]


def _self_loop(folder: Path, name: str) -> list[Path]:
    (folder / name).symlink_to(name)
    return [folder / name]


def _broken(folder: Path, name: str) -> list[Path]:
    (folder / name).symlink_to("nowhere/at/all.png")
    return [folder / name]


def _fifo(folder: Path, name: str) -> list[Path]:
    os.mkfifo(folder / name)  # reading it would block forever
    return [folder / name]


def _folder(folder: Path, name: str) -> list[Path]:
    (folder / name).mkdir()
    return [folder / name]


def _twin_case(folder: Path, name: str) -> list[Path]:
    """00001.png and 00001.PNG: which one is meant cannot be told."""
    src = next(p for p in folder.iterdir() if p.name != name)
    shutil.copy(src, folder / name)
    shutil.copy(src, folder / name.replace(".png", ".PNG"))
    return [folder / name, folder / name.replace(".png", ".PNG")]


def _non_utf8(folder: Path, name: str) -> list[Path]:
    src = next(folder.iterdir())
    odd = Path(os.fsdecode(os.fsencode(folder) + b"/bad\xff" + name.encode()))
    shutil.copy(src, odd)
    return [odd]


def _control(folder: Path, name: str) -> list[Path]:
    src = next(folder.iterdir())
    odd = folder / f"new\nline{name}"
    shutil.copy(src, odd)
    return [odd]


BAD_ENTRIES = {"link loop": _make_loop, "self loop": _self_loop, "broken link": _broken,
               "fifo": _fifo, "folder": _folder, "two files for one id": _twin_case,
               "name not utf-8": _non_utf8, "newline in name": _control}


@pytest.mark.parametrize("where", ["images", "labels"])
@pytest.mark.parametrize("case", list(BAD_ENTRIES))
def test_unusable_entries_are_one_line_each(tiny_gta5, copy_tree, case, where):
    root = copy_tree(tiny_gta5)
    bad = BAD_ENTRIES[case](root / where, "00042.png")
    with pytest.raises(DataError) as err:
        gta5(root, manifest=None)
    msg = str(err.value)
    assert "\n" not in msg and "cannot be used" in msg and "data prepare" in msg
    report = verify_dataset("gta5", root)
    unusable = report.by_category("unusable file")
    assert sorted(p.path for p in unusable) == sorted(bad), unusable
    assert all("\n" not in p.detail for p in unusable)
    result = CliRunner().invoke(data, ["verify", "gta5", "--root", str(root), "--workers", "1"])
    assert isinstance(result.exception, DataError) and "unusable file" in str(result.exception)
    assert "\n" not in str(result.exception)
    str(result.exception).encode("utf-8")  # printable: undecodable bytes are escaped
    # prepare records them and serves the rest (the good pairs stay usable)
    manifest = prepare_dataset("gta5", root)
    assert manifest.counts["unusable_file"] == len(bad)
    assert len(gta5(root)) == 6


def test_symlink_loop_between_city_folders(tiny_cityscapes, copy_tree):
    root = copy_tree(tiny_cityscapes)
    val = root / "leftImg8bit" / "val"
    (val / "aaa").symlink_to("bbb")
    (val / "bbb").symlink_to("aaa")
    with pytest.raises(DataError, match=r"leftImg8bit/val/aaa: cannot be opened") as err:
        build_dataset("cityscapes", root, "val", manifest=None)
    assert "\n" not in str(err.value)
    assert len(build_dataset("cityscapes", root, "train", manifest=None)) == 6  # other split fine


def test_png_directly_in_a_city_level_folder_is_named(tiny_cityscapes, copy_tree):
    root = copy_tree(tiny_cityscapes)
    first = next((root / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))
    shutil.copy(first, root / "leftImg8bit" / "val" / first.name)
    report = verify_dataset("cityscapes", root)
    [problem] = report.by_category("unusable file")
    assert problem.path == root / "leftImg8bit" / "val" / first.name
    assert "one folder deeper" in problem.detail


@pytest.mark.parametrize("name", ["with space", "straße", "東京", "[bold]x", "100%", "{id}",
                                  "-dash", "a'quote\""])
def test_unusual_but_valid_names_load(tiny_gta5, copy_tree, name):
    root = copy_tree(tiny_gta5)
    for folder in ("images", "labels"):
        shutil.copy(root / folder / "00003.png", root / folder / f"{name}.png")
    ds = gta5(root, manifest=None)
    assert name in ds.ids
    sample = ds[ds.ids.index(name)]
    assert np.array_equal(sample["label"].numpy(), ds[ds.ids.index("00003")]["label"].numpy())
    report = verify_dataset("gta5", root)
    assert not report.problems
    result = CliRunner().invoke(data, ["verify", "gta5", "--root", str(root), "--workers", "1"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("pattern", ["images", "labels", "both"])
def test_upper_case_png_extension_is_read(tiny_gta5, copy_tree, pattern):
    root = copy_tree(tiny_gta5)
    folders = ("images", "labels") if pattern == "both" else (pattern,)
    for folder in folders:
        for p in (root / folder).iterdir():
            p.rename(p.with_suffix(".PNG"))
    reference = gta5(tiny_gta5, manifest=None)
    ds = gta5(root, manifest=None)
    assert ds.ids == reference.ids
    assert all(np.array_equal(ds[i]["label"].numpy(), reference[i]["label"].numpy())
               for i in range(len(ds)))
    assert not verify_dataset("gta5", root).problems
    assert prepare_dataset("gta5", root).counts["ok"] == 6


def test_unreadable_folder_is_one_line(tiny_gta5, copy_tree, monkeypatch):
    root = copy_tree(tiny_gta5)
    real = os.scandir

    def refuse(path):
        if Path(path) == root / "labels":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", refuse)
    with pytest.raises(DataError, match=r"cannot read folder .*labels: Permission denied") as err:
        gta5(root, manifest=None)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_one_line(tiny_gta5, copy_tree):
    root = copy_tree(tiny_gta5)
    (root / "labels" / "00002.png").chmod(0)
    report = verify_dataset("gta5", root)
    [problem] = report.by_category("corrupt")
    assert problem.path.name == "00002.png" and "Permission denied" in problem.detail
