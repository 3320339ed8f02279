"""MiniCity: determinism, real on-disk formats, class presence, label/image agreement, caching,
and a domain gap that is more than colour statistics. All images are tiny (<= 48x96)."""
from __future__ import annotations

import io
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from torchvision.io import ImageReadMode, decode_png

from udabench import taxonomy
from udabench.errors import ConfigError, DataError, UserError
from udabench.minicity import (MiniCityParams, ensure_minicity, render_scene, write_cityscapes,
                               write_gta5, write_synthia)
from udabench.minicity.canvas import Camera, Canvas
from udabench.minicity.formats import (GTA5_PALETTE, TRAIN_CITIES, VAL_CITIES, image_seed,
                                       png_bytes)
from udabench.minicity.generate import MARKER
from udabench.minicity.populate import draw_layers
from udabench.minicity.render import render_full

H, W = 32, 64
P = MiniCityParams(height=H, width=W, n_source=3, n_target_train=3, n_target_val=2)
THINGS = set(range(11, 19))


def decode(path_or_bytes) -> np.ndarray:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    out = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.UNCHANGED)
    return out.numpy()


def quiet() -> Console:
    return Console(file=io.StringIO())


# ---------------------------------------------------------------- params and determinism

def test_params_key_is_stable_and_covers_every_field():
    same = MiniCityParams(height=H, width=W, n_source=3, n_target_train=3, n_target_val=2)
    assert P.key() == same.key()
    assert re.fullmatch(r"[0-9a-f]{12}", P.key())
    assert MiniCityParams(texture=1).key() == MiniCityParams(texture=1.0).key()  # TOML int vs float
    keys = {P.key()}
    for name, value in [("seed", 1), ("height", 48), ("n_source", 4), ("noise", 0.0), ("blur", 2.0),
                        ("class_shift", 0.9), ("layout_shift", 0.0), ("game_jitter", 0.1)]:
        keys.add(replace(P, **{name: value}).key())
    assert len(keys) == 9


@pytest.mark.parametrize("field, value", [("height", 8), ("n_source", 0), ("noise", -1.0),
                                          ("texture", float("nan")), ("seed", 1.5), ("blur", "x")])
def test_params_reject_bad_values_with_one_line_naming_the_field(field, value):
    with pytest.raises(ConfigError) as info:
        MiniCityParams(**{field: value})
    assert field in str(info.value) and "\n" not in str(info.value)


PAIRS = [("game", "gta5"), ("game", "synthia"), ("real", "cityscapes")]


@pytest.mark.parametrize("domain, variant", PAIRS)
def test_render_is_deterministic_and_seeded(domain, variant):
    a_rgb, a_lab = render_scene(7, H, W, domain, variant, P)
    render_scene(8, 48, 96, domain, variant, P)  # other sizes/seeds in between change nothing
    b_rgb, b_lab = render_scene(7, H, W, domain, variant, P)
    assert a_rgb.shape == (H, W, 3) and a_rgb.dtype == np.uint8
    assert a_lab.shape == (H, W) and a_lab.dtype == np.uint8
    assert np.array_equal(a_rgb, b_rgb) and np.array_equal(a_lab, b_lab)
    c_rgb, c_lab = render_scene(9, H, W, domain, variant, P)
    assert not np.array_equal(a_rgb, c_rgb) and not np.array_equal(a_lab, c_lab)
    assert set(np.unique(a_lab)) <= set(range(19)) | {255}


def test_image_seeds_depend_on_split_and_index_only():
    splits = ("gta5", "synthia", "cityscapes/train")
    seeds = {image_seed(P, split, i) for split in splits for i in range(5)}
    assert len(seeds) == 15
    assert image_seed(P, "gta5", 3) == image_seed(replace(P, noise=9.0), "gta5", 3)
    assert image_seed(P, "gta5", 3) != image_seed(replace(P, seed=1), "gta5", 3)


def test_bad_domain_variant_or_seed_raise():
    for args in [(0, H, W, "cartoon", "gta5"), (0, H, W, "game", "kitti"), (-1, H, W, "game", "gta5")]:
        with pytest.raises(ValueError):
            render_scene(*args, P)


# ---------------------------------------------------------------- geometry and drawing

def test_camera_projection_hand_computed():
    cam = Camera(f=100.0, xv=32.0, yh=10.0, hc=1.5, xc=0.5)
    assert cam.x(0.5, 10.0) == 32.0 and cam.y(1.5, 10.0) == 10.0  # on the optical axis
    assert cam.x(2.5, 10.0) == pytest.approx(32.0 + 100 * 2.0 / 10)
    assert cam.y(0.0, 5.0) == pytest.approx(10.0 + 100 * 1.5 / 5)  # ground 5 m ahead


def test_primitives_cover_the_expected_pixels():
    cv = Canvas(20, 30)
    cv.rect(2.0, 3.0, 6.0, 5.0, 4, cv.new_paint(0))
    assert np.argwhere(cv.code == 4).tolist() == [[r, c] for r in (3, 4) for c in range(2, 6)]
    cv.rect(10.2, 0.0, 10.3, 20.0, 5, cv.new_paint(1))  # thinner than a pixel: still one column
    assert (cv.code[:, 10] == 5).all() and (cv.code == 5).sum() == 20
    cv = Canvas(40, 40)
    cv.ellipse(20.0, 20.0, 10.0, 5.0, 7, cv.new_paint(0))
    assert abs((cv.code == 7).sum() - np.pi * 50) < 12
    cv = Canvas(40, 40)
    cv.polygon([(0, 0), (40, 0), (0, 40)], 8, cv.new_paint(0))  # triangle, area 800
    assert abs((cv.code == 8).sum() - 800) <= 40
    assert cv.code[1, 1] == 8 and cv.code[38, 38] != 8


def test_painter_order_nearer_objects_win():
    cv = Canvas(10, 10)
    near = lambda c, _: c.rect(0, 0, 6, 6, 13, c.new_paint(0))  # noqa: E731
    far = lambda c, _: c.rect(3, 3, 10, 10, 2, c.new_paint(1))  # noqa: E731
    draw_layers(cv, None, [(5.0, near), (50.0, far)])  # listed near first, drawn far first
    assert cv.code[4, 4] == 13 and cv.code[8, 8] == 2


# ---------------------------------------------------------------- content

def _labels(variant: str, domain: str, n: int, h: int = 48, w: int = 96) -> list[np.ndarray]:
    return [render_scene(image_seed(P, variant, i), h, w, domain, variant, P)[1] for i in range(n)]


@pytest.mark.parametrize("domain, variant", [("game", "gta5"), ("real", "cityscapes")])
def test_all_19_classes_appear_and_rare_classes_are_rare(domain, variant):
    labels = _labels(variant, domain, 40)
    present = np.array([[np.any(lab == c) for c in range(19)] for lab in labels])
    assert present.any(axis=0).all(), [taxonomy.CLASS_NAMES[c] for c in np.nonzero(~present.any(0))[0]]
    counts = present.sum(axis=0)
    road, train = taxonomy.TRAIN_ID_BY_NAME["road"], taxonomy.TRAIN_ID_BY_NAME["train"]
    assert counts[road] == 40 and counts[train] <= 12


def test_synthia_style_has_no_terrain_truck_or_train_and_ignores_lane_marks():
    labels = _labels("synthia", "game", 30)
    seen = set(np.unique(np.stack(labels)))
    assert seen.isdisjoint({9, 14, 16})
    assert {0, 1, 2, 10, 11, 13} <= seen and 255 in seen
    # the same scene in the GTA5 encoding labels lane marks as road
    _, cv = render_full(image_seed(P, "synthia", 0), 48, 96, "game", "synthia", P)
    assert np.any(cv.code == 19)


def test_game_style_is_flat_per_paint_and_each_paint_has_one_label():
    rgb, cv = render_full(3, 48, 96, "game", "gta5", P)
    for pid in np.unique(cv.paint):
        sel = cv.paint == pid
        assert len(np.unique(cv.code[sel])) == 1
        assert len(np.unique(rgb[sel].reshape(-1, 3), axis=0)) == 1


def _class_means(pairs) -> np.ndarray:
    sums, counts = np.zeros((19, 3)), np.zeros(19)
    for rgb, lab in pairs:
        for c in range(19):
            sel = lab == c
            sums[c] += rgb[sel].sum(axis=0)
            counts[c] += sel.sum()
    return sums / np.maximum(counts, 1)[:, None]


def _nearest_mean_accuracy(means: np.ndarray, pairs) -> float:
    hits = total = 0
    for rgb, lab in pairs:
        keep = lab != 255
        d = ((rgb[keep][:, None, :].astype(float) - means[None]) ** 2).sum(-1)
        hits += (d.argmin(1) == lab[keep]).sum()
        total += keep.sum()
    return hits / total


def test_labels_agree_with_images_and_the_domain_gap_is_real():
    game = [render_scene(image_seed(P, "gta5", i), 48, 96, "game", "gta5", P) for i in range(16)]
    real = [render_scene(image_seed(P, "cityscapes/val", i), 48, 96, "real", "cityscapes", P)
            for i in range(16)]
    means = _class_means(game[:8])
    acc_game = _nearest_mean_accuracy(means, game[8:])
    acc_real = _nearest_mean_accuracy(means, real)
    # colour alone explains a game label map well (labels agree with the image) ...
    assert acc_game > 0.6
    # ... and transfers much worse to the real style (but not to chance: 1/19)
    assert acc_real < acc_game - 0.15 and acc_real > 0.1
    # class-consistent colour change: road, vegetation and car move in colour
    real_means = _class_means(real)
    for name in ("road", "vegetation", "car"):
        c = taxonomy.TRAIN_ID_BY_NAME[name]
        assert np.linalg.norm(real_means[c] - means[c]) > 15, name


def _highpass_energy(rgb: np.ndarray, paint: np.ndarray) -> float:
    """Mean |Laplacian| over pixels whose 4 neighbours have the same paint (region interiors)."""
    g = rgb.astype(float).mean(-1)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    centre = paint[1:-1, 1:-1]
    inner = np.ones(centre.shape, dtype=bool)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        inner &= paint[1 + dy:paint.shape[0] - 1 + dy, 1 + dx:paint.shape[1] - 1 + dx] == centre
    return float(np.abs(lap[inner]).mean())


def test_real_style_has_texture_and_noise_inside_regions_and_strength_params_control_it():
    seeds = [image_seed(P, "cityscapes/train", i) for i in range(4)]
    energy = {}
    for name, params, domain in [("game", P, "game"), ("real", P, "real"),
                                 ("weak", replace(P, texture=0.2, noise=0.5, blur=0.0), "real")]:
        renders = [render_full(s, 48, 96, domain, "cityscapes", params) for s in seeds]
        energy[name] = np.mean([_highpass_energy(rgb, cv.paint) for rgb, cv in renders])
    assert energy["game"] < 1e-9 and energy["real"] > 2.0  # flat game regions, textured real ones
    assert energy["weak"] < 0.7 * energy["real"]
    # all strengths off: the real style differs from the game style far less than at full strength
    off = replace(P, texture=0.0, noise=0.0, blur=0.0, colour_shift=0.0, class_shift=0.0,
                  instance_spread=0.0, lighting=0.0, game_jitter=0.0)

    def gap(params):
        diffs = [render_scene(s, 48, 96, "game", "cityscapes", params)[0].astype(int)
                 - render_scene(s, 48, 96, "real", "cityscapes", params)[0] for s in seeds]
        return np.mean([np.abs(d).mean() for d in diffs])
    assert gap(off) < 6 and gap(P) > 3 * gap(off)


def test_target_layout_shifts_class_frequencies():
    def shares(variant, domain, params=P):
        labels = [render_scene(image_seed(params, "x", i), 48, 96, domain, variant, params)[1]
                  for i in range(24)]
        counts = np.bincount(np.stack(labels).ravel(), minlength=256)[:19]
        return counts / counts.sum()
    gta, cs = shares("gta5", "game"), shares("cityscapes", "real")
    person, car, sky = (taxonomy.TRAIN_ID_BY_NAME[n] for n in ("person", "car", "sky"))
    assert cs[person] > 1.5 * gta[person] and cs[car] > gta[car] and cs[sky] < gta[sky]
    # layout_shift = 0: the target variant is laid out like the source (sky: a large, stable share)
    same = shares("cityscapes", "game", replace(P, layout_shift=0.0))
    assert abs(same[sky] - gta[sky]) < 0.3 * abs(cs[sky] - gta[sky])


# ---------------------------------------------------------------- on-disk formats

@pytest.mark.parametrize("shape, dtype, palette", [
    ((5, 7), np.uint8, None), ((5, 7), np.uint8, GTA5_PALETTE), ((5, 7, 3), np.uint8, None),
    ((5, 7, 3), np.uint16, None)])
@pytest.mark.parametrize("level", [0, 1, 9])
def test_png_writer_round_trips_through_libpng_and_pillow(shape, dtype, palette, level):
    arr = np.random.default_rng(0).integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype)
    if palette is not None:
        arr %= 34
    data = png_bytes(arr, level, palette)
    out = decode(data)
    assert out.dtype == dtype and np.array_equal(np.moveaxis(out, 0, -1).reshape(arr.shape), arr)
    if dtype == np.uint8:
        im = Image.open(io.BytesIO(data))
        assert im.mode == ("P" if palette is not None else "L" if arr.ndim == 2 else "RGB")
        assert np.array_equal(np.asarray(im), arr)


def test_gta5_layout_palette_labels_read_back(tmp_path):
    n = 12
    write_gta5(tmp_path, P, n)
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert names == [f"{i:05d}.png" for i in range(1, n + 1)]
    raw_ids = set()
    for i in range(n):
        name = f"{i + 1:05d}.png"
        data = (tmp_path / "labels" / name).read_bytes()
        assert data[25] == 3  # IHDR colour type: palette
        im = Image.open(io.BytesIO(data))
        assert im.mode == "P" and im.getpalette()[26 * 3:27 * 3] == [0, 0, 142]  # labelId 26 = car
        ids = decode(data)
        assert ids.shape == (1, H, W) and ids.dtype == np.uint8
        img = decode(tmp_path / "images" / name)
        assert img.shape == (3, H, W) and img.dtype == np.uint8
        rgb, train_ids = render_scene(image_seed(P, "gta5", i), H, W, "game", "gta5", P)
        assert np.array_equal(taxonomy.GTA5_ID_TO_TRAIN_ID[ids[0]], train_ids)
        assert np.array_equal(np.moveaxis(img, 0, -1), rgb)
        raw_ids |= set(np.unique(ids).tolist())
    assert {0, 1} <= raw_ids  # unlabeled and ego vehicle: mapped to 255 by the loader
    assert raw_ids <= {c.label_id for c in taxonomy.CLASSES} | {0, 1, 4, 10}


def test_synthia_layout_16bit_labels_read_back(tmp_path):
    n = 6
    write_synthia(tmp_path, P, n)
    assert sorted(p.name for p in (tmp_path / "RGB").iterdir()) == [f"{i:07d}.png" for i in range(n)]
    valid = set(taxonomy.SYNTHIA_ID_TO_TRAIN_ID) | {0, 22}
    red_ids = set()
    for i in range(n):
        lab = decode(tmp_path / "GT" / "LABELS" / f"{i:07d}.png")
        assert lab.shape == (3, H, W) and lab.dtype == np.uint16
        red, green, blue = lab.astype(np.int64)
        assert not blue.any()
        red_ids |= set(np.unique(red).tolist())
        train_ids = taxonomy.SYNTHIA_TO_TRAIN_ID[red]
        expected = render_scene(image_seed(P, "synthia", i), H, W, "game", "synthia", P)[1]
        assert np.array_equal(train_ids, expected)
        assert np.isin(train_ids[green > 0], list(THINGS)).all()  # instance ids on things only
        if np.isin(train_ids, list(THINGS)).any():
            assert green.max() > 0
    assert red_ids <= valid and {0, 22} <= red_ids
    assert red_ids.isdisjoint({16, 18, 20})  # terrain, truck, train


def test_cityscapes_layout_and_labelids_read_back(tmp_path):
    write_cityscapes(tmp_path, P, 5, 3)
    for split, n, cities in (("train", 5, TRAIN_CITIES), ("val", 3, VAL_CITIES)):
        images = sorted((tmp_path / "leftImg8bit" / split).rglob("*.png"))
        assert len(images) == n
        for path in images:
            city = path.parent.name
            assert city in cities
            assert re.fullmatch(rf"{city}_\d{{6}}_\d{{6}}_leftImg8bit\.png", path.name)
            stem = path.name[: -len("_leftImg8bit.png")]
            lab = decode(tmp_path / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
            img = decode(path)
            assert lab.shape == (1, H, W) and lab.dtype == np.uint8 and img.shape == (3, H, W)
            seq = int(stem.split("_")[1])
            index = seq * len(cities) + cities.index(city)
            rgb, train_ids = render_scene(image_seed(P, f"cityscapes/{split}", index), H, W, "real",
                                          "cityscapes", P)
            assert np.array_equal(taxonomy.LABEL_ID_TO_TRAIN_ID[lab[0]], train_ids)
            assert np.array_equal(np.moveaxis(img, 0, -1), rgb)
    assert set(TRAIN_CITIES).isdisjoint(VAL_CITIES)


# ---------------------------------------------------------------- caching

def _snapshot(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_ensure_minicity_generates_reuses_and_resumes(tmp_path):
    paths = ensure_minicity(tmp_path, P, console=quiet())
    assert paths.root == tmp_path / "minicity" / P.key()
    assert len(list((paths.gta5 / "images").glob("*.png"))) == 3
    assert len(list((paths.synthia / "RGB").glob("*.png"))) == 3
    assert len(list((paths.cityscapes / "leftImg8bit" / "val").rglob("*.png"))) == 2
    marker = json.loads((paths.gta5 / MARKER).read_text())
    assert marker["params"] == P.to_dict() and marker["key"] == P.key()
    before = _snapshot(paths.root)
    assert ensure_minicity(tmp_path, P, console=quiet()) == paths
    assert _snapshot(paths.root) == before  # reused: nothing rewritten
    # interrupted: marker and one image missing, one label truncated -> only those are redone
    victim, label = paths.gta5 / "images" / "00002.png", paths.gta5 / "labels" / "00003.png"
    good_victim, good_label = victim.read_bytes(), label.read_bytes()
    (paths.gta5 / MARKER).unlink()
    victim.unlink()
    label.write_bytes(good_label[:40])
    ensure_minicity(tmp_path, P, console=quiet())
    after = _snapshot(paths.root)
    assert victim.read_bytes() == good_victim and label.read_bytes() == good_label
    changed = {p for p in after if after[p] != before.get(p)}
    assert changed == {victim, label, paths.gta5 / MARKER, paths.root / "params.json"}
    # new params -> new key -> a separate, complete dataset
    other = ensure_minicity(tmp_path, replace(P, seed=1), sources=("gta5",), console=quiet())
    assert other.root != paths.root and (other.gta5 / MARKER).exists()
    assert not other.synthia.exists() and (other.cityscapes / MARKER).exists()
    first = "images/00001.png"
    assert (other.gta5 / first).read_bytes() != (paths.gta5 / first).read_bytes()


def test_ensure_minicity_rejects_unknown_source(tmp_path):
    with pytest.raises(UserError, match="kitti"):
        ensure_minicity(tmp_path, P, sources=("kitti",), console=quiet())


def test_ensure_minicity_reports_an_unusable_data_root(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(DataError) as info:
        ensure_minicity(blocker, P, console=quiet())
    assert str(blocker) in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- the files the official tools open

def test_cityscapes_instance_ids_follow_the_official_encoding(tmp_path):
    """_gtFine_instanceIds.png: 16-bit; labelId * 1000 + k on each counted object (k = 0, 1, ...
    per class), the labelId elsewhere; objects are the connected paints of one instance."""
    from udabench.minicity.render import build_scene, instance_map

    write_cityscapes(tmp_path, P, 3, 2)
    counted = {c.label_id for c in taxonomy.CLASSES if c.train_id in THINGS}
    objects = 0
    for path in sorted(tmp_path.rglob("*_gtFine_instanceIds.png")):
        labels = tmp_path / str(path.relative_to(tmp_path)).replace("instanceIds", "labelIds")
        inst = np.array(Image.open(path))  # Pillow: what cityscapesscripts reads it with
        ids = np.array(Image.open(labels))
        assert inst.dtype == np.uint16 and inst.shape == ids.shape
        assert np.array_equal(decode(path)[0], inst)  # libpng agrees
        stuff = inst < 1000
        assert np.array_equal(inst[stuff], ids[stuff])  # stuff (and unnumbered things): labelId
        assert np.array_equal(inst[~stuff] // 1000, ids[~stuff])
        assert set(np.unique(ids[~stuff]).tolist()) <= counted
        # the same object in the scene has one number; numbers of a class are 0..n-1
        split, city, name = path.parts[-3], path.parts[-2], path.name
        stem = name.replace("_gtFine_instanceIds.png", "")
        index = int(stem.split("_")[1]) * len(TRAIN_CITIES if split == "train" else VAL_CITIES) + \
            (TRAIN_CITIES if split == "train" else VAL_CITIES).index(city)
        scene = build_scene(image_seed(P, f"cityscapes/{split}", index), H, W, "cityscapes", P)
        raw = instance_map(scene)
        for value in np.unique(inst[~stuff]):
            assert len(np.unique(raw[inst == value])) == 1
        for label_id in np.unique(ids[~stuff]):
            numbers = np.unique(inst[(ids == label_id) & ~stuff]) % 1000
            assert numbers.tolist() == list(range(len(numbers)))
        objects += int((~stuff).any())
    assert objects  # some image has counted objects


def test_a_tree_generated_without_instance_files_is_completed_in_place(tmp_path):
    """MiniCity trees generated before the instance files existed get them on first use: same key,
    every existing file kept byte for byte (and untouched)."""
    paths = ensure_minicity(tmp_path, P, sources=("gta5",), console=quiet())
    marker = paths.cityscapes / MARKER
    old = json.loads(marker.read_text())
    assert old["files"] == ["_gtFine_labelIds.png", "_gtFine_instanceIds.png"]
    instance_files = sorted(paths.cityscapes.rglob("*_gtFine_instanceIds.png"))
    assert len(instance_files) == 5
    wanted = {p: p.read_bytes() for p in instance_files}
    for p in instance_files:
        p.unlink()
    del old["files"]
    marker.write_text(json.dumps(old))  # what the previous generator wrote
    before = _snapshot(paths.root)
    assert ensure_minicity(tmp_path, P, sources=("gta5",), console=quiet()) == paths
    after = _snapshot(paths.root)
    assert {p: p.read_bytes() for p in instance_files} == wanted
    changed = {p for p in after if after.get(p) != before.get(p)}
    assert changed == set(instance_files) | {marker, paths.root / "params.json"}
