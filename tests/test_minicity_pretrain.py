"""MiniCity pretraining: the third-domain generator (determinism, balance, shapes, a style apart
from both MiniCity styles, cache), the pretraining run (bit-reproducible, standard ResNet
geometry) and the shipped weights (checksum, provenance, strict loading into the segmenter)."""
from __future__ import annotations

import importlib.util
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from timm.models.resnet import BasicBlock, ResNet

from udabench.errors import ConfigError, UserError
from udabench.minicity import MiniCityParams, pretrained, render_scene
from udabench.minicity.pretrain import (
    PretrainConfig,
    _batch,
    build_classifier,
    pretrain,
    recipe,
    standard_geometry,
)
from udabench.minicity.pretrain_data import (
    BACKGROUND,
    CLASSES,
    N_CLASSES,
    REACH,
    SHAPES,
    TEXTURES,
    PretrainDataParams,
    cache_path,
    class_parts,
    load_split,
    render_image,
    render_image_dense,
    render_split,
    shape_mask,
)
from udabench.models import SegmenterConfig, build_backbone, build_segmenter

REPO = Path(__file__).resolve().parents[1]
SMALL = PretrainDataParams(size=20, n_train_per_class=2, n_val_per_class=1)
SHIPPED = ("resnet-tiny", "mit-tiny")


# ------------------------------------------------------------------------------- generator

def test_images_are_a_pure_function_of_params_split_and_index():
    images, labels = render_split(SMALL, "train", count=N_CLASSES + 3)
    for i in (0, 5, N_CLASSES + 2):  # rendered alone and out of order: the same bytes
        image, label = render_image(SMALL, "train", i)
        assert np.array_equal(image, images[i]) and label == labels[i]
    assert images.shape == (N_CLASSES + 3, 20, 20, 3) and images.dtype == np.uint8
    assert not np.array_equal(render_image(SMALL, "val", 0)[0], images[0])  # splits differ
    assert not np.array_equal(render_image(replace(SMALL, seed=1), "train", 0)[0], images[0])
    assert len({images[i].tobytes() for i in range(len(images))}) == len(images)


def test_every_split_is_exactly_balanced_and_classes_are_shape_times_texture():
    assert N_CLASSES == len(SHAPES) * len(TEXTURES) == 64
    assert len(set(CLASSES)) == N_CLASSES
    for label, name in enumerate(CLASSES):
        shape, texture = class_parts(label)
        assert name == f"{texture} {shape}"
    for split, per_class in (("train", 2), ("val", 1)):
        labels = np.array([render_image(SMALL, split, i)[1] for i in range(SMALL.count(split))])
        assert np.array_equal(np.bincount(labels, minlength=N_CLASSES),
                              np.full(N_CLASSES, per_class))


def test_shape_masks_have_their_hand_computed_areas_and_stay_within_reach():
    g = ((np.arange(680) + 0.5) / 200 - 1.7).astype(np.float32)  # [-1.7, 1.7], step 1/200
    u, v = np.meshgrid(g, g)
    area = {s: shape_mask(s, u, v).sum() / 200 ** 2 for s in SHAPES}
    expected = {"disc": math.pi, "ring": math.pi * (1 - 0.55 ** 2), "square": 1.6 ** 2,
                "triangle": 3 * math.sqrt(3) / 4, "cross": 2 * 0.6 * 1.9 - 0.6 ** 2,
                "star": 5 * 1.0 * 0.42 * math.sin(math.pi / 5)}  # 10 triangles R r sin(36)/2
    for shape, value in expected.items():
        assert area[shape] == pytest.approx(value, rel=0.01), shape
    assert 0 < area["crescent"] < math.pi and 0 < area["heart"] < 4
    for s in SHAPES:  # drawing windows rely on this bound
        assert np.hypot(u, v)[shape_mask(s, u, v)].max() <= REACH / 1.25


def _colour_histogram(images: list[np.ndarray], bins: int = 4) -> np.ndarray:
    q = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.int64) // (256 // bins)
    h = np.bincount((q[:, 0] * bins + q[:, 1]) * bins + q[:, 2], minlength=bins ** 3)
    return h / h.sum()


def test_the_third_domain_is_further_from_each_minicity_style_than_they_are_from_each_other():
    mp = MiniCityParams(height=32, width=64)
    styles = {
        "game (gta5)": [render_scene(s, 32, 64, "game", "gta5", mp)[0] for s in range(8)],
        "game (synthia)": [render_scene(s, 32, 64, "game", "synthia", mp)[0] for s in range(8)],
        "real": [render_scene(s, 32, 64, "real", "cityscapes", mp)[0] for s in range(8)],
    }
    third = _colour_histogram([render_image(SMALL, "train", i)[0] for i in range(16)])
    hist = {name: _colour_histogram(images) for name, images in styles.items()}
    tv = lambda a, b: 0.5 * np.abs(a - b).sum()  # noqa: E731 - total variation distance
    minicity_gap = max(tv(hist["game (gta5)"], hist["real"]), tv(hist["game (synthia)"], hist["real"]))
    for name, h in hist.items():
        assert tv(third, h) > minicity_gap + 0.05, name
    # and it is more saturated than either style (hues from the whole colour circle)
    def saturation(images):
        f = np.concatenate([im.reshape(-1, 3) for im in images]).astype(float)
        return float(np.mean((f.max(1) - f.min(1)) / np.maximum(f.max(1), 1)))
    third_sat = saturation([render_image(SMALL, "train", i)[0] for i in range(16)])
    assert all(third_sat > saturation(images) + 0.1 for images in styles.values())


@pytest.mark.parametrize("field, value", [("size", 8), ("n_train_per_class", 0), ("seed", -1),
                                          ("size", 32.5), ("n_val_per_class", True)])
def test_bad_generator_params_are_one_line_config_errors(field, value):
    with pytest.raises(ConfigError) as err:
        replace(SMALL, **{field: value})
    assert field in str(err.value) and "\n" not in str(err.value)


def test_the_key_covers_every_field():
    keys = {SMALL.key()} | {replace(SMALL, **{f: getattr(SMALL, f) + 1}).key()
                             for f in ("seed", "size", "n_train_per_class", "n_val_per_class")}
    assert len(keys) == 5


def test_the_cache_returns_the_rendered_arrays_and_renders_a_damaged_file_again(tmp_path):
    images, labels = render_split(SMALL, "val")
    path = cache_path(SMALL, "val", tmp_path)
    assert path == tmp_path / "minicity-pretrain" / SMALL.key() / "val.npz"
    for _ in range(2):  # written, then read back
        got = load_split(SMALL, "val", tmp_path)
        assert np.array_equal(got[0], images) and np.array_equal(got[1], labels)
    assert path.is_file() and not list(path.parent.glob(".*tmp"))
    path.write_bytes(path.read_bytes()[:100])  # truncated
    got = load_split(SMALL, "val", tmp_path)
    assert np.array_equal(got[0], images) and path.stat().st_size > 100


# -------------------------------------------------------------------------------- training

TINY = dict(steps=3, batch_size=16, crop=32, warmup_steps=1, eval_train_per_class=1,
            data=PretrainDataParams(size=36, n_train_per_class=1, n_val_per_class=1))


@pytest.mark.parametrize("backbone", SHIPPED)
def test_a_tiny_pretraining_run_is_bit_reproducible(backbone):
    torch.set_num_threads(1)
    runs = [pretrain(recipe(backbone, **TINY)) for _ in range(2)]
    a, b = (r.state_dict for r in runs)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0].heldout_accuracy == runs[1].heldout_accuracy
    assert runs[0].final_loss == runs[1].final_loss
    init = build_backbone(SegmenterConfig(backbone=backbone, init="scratch")).body.state_dict()
    assert any(not torch.equal(a[k], init[k]) for k in a if a[k].is_floating_point())  # it trained
    other = pretrain(recipe(backbone, **{**TINY, "seed": 1})).state_dict
    assert any(not torch.equal(a[k], other[k]) for k in a if a[k].is_floating_point())


def test_the_standard_geometry_is_imagenets_output_stride_32_resnet():
    model = build_classifier(recipe("resnet-tiny", task="classification", geometry="standard"))
    reference = ResNet(block=BasicBlock, layers=(1, 1, 1, 1), channels=(16, 32, 64, 128),
                       stem_width=16, num_classes=0)  # timm's resnet-tiny at output stride 32
    reference.load_state_dict(model.backbone.body.state_dict(), strict=True)
    model.eval(), reference.eval()
    x = torch.rand(2, 3, 64, 64)
    ours = model.backbone(model.normalize(x))[-1]
    assert ours.shape == (2, 128, 2, 2)
    assert torch.equal(ours, reference.forward_features(model.normalize(x)))
    mit = build_backbone(SegmenterConfig(backbone="mit-tiny", init="scratch"))
    assert standard_geometry(mit) is mit  # nothing to undo


def test_the_segmenter_geometry_keeps_the_dilated_resnet_the_segmenter_runs():
    assert (recipe("resnet-tiny").task, recipe("resnet-tiny").geometry) == ("segmentation",
                                                                            "segmenter")
    assert (recipe("mit-tiny").task, recipe("mit-tiny").geometry) == ("classification", "standard")
    model = build_classifier(recipe("resnet-tiny", task="classification", geometry="segmenter"))
    seg = build_segmenter(SegmenterConfig(backbone="resnet-tiny", init="scratch"), 19)
    seg.backbone.body.load_state_dict(model.backbone.body.state_dict(), strict=True)
    model.eval(), seg.eval()
    x = torch.rand(2, 3, 64, 64)
    ours = model.backbone(model.normalize(x))[-1]
    assert ours.shape == (2, 128, 8, 8)  # output stride 8, as MiniCity's segmenter
    assert torch.equal(ours, seg(x)["feat"])


def test_dense_maps_label_every_pixel_of_the_classification_images():
    images, maps = render_split(SMALL, "train", count=N_CLASSES, dense=True)
    assert maps.shape == (N_CLASSES, 20, 20) and maps.dtype == np.uint8
    for i in (0, 9, N_CLASSES - 1):
        image, label = render_image(SMALL, "train", i)
        dense_image, label_map = render_image_dense(SMALL, "train", i)
        assert np.array_equal(image, dense_image) and np.array_equal(image, images[i])
        assert np.array_equal(label_map, maps[i])
        assert (label_map == label).any() and (label_map == BACKGROUND).any()
        assert set(np.unique(label_map)) <= set(range(N_CLASSES + 1))
    # the main object is the largest: its class is the most common object label in every image
    largest = [np.bincount(m[m != BACKGROUND], minlength=N_CLASSES).argmax() for m in maps]
    assert largest == [i % N_CLASSES for i in range(N_CLASSES)]


def test_dense_crops_move_the_label_maps_with_the_pixels():
    # blocks of constant colour, one label each: wherever the cropped image shows a block's
    # exact colour (away from blends at block edges), the cropped label must be that block's
    rng = np.random.default_rng(0)
    block = np.kron(rng.integers(0, 8, (4, 6, 6)), np.ones((1, 8, 8), dtype=np.int64))  # 48x48
    images = np.repeat((block * 30).astype(np.uint8)[..., None], 3, axis=-1)
    maps = block.astype(np.uint8)
    x, y = _batch(images, np.arange(4), 32, np.random.default_rng(1), maps)
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 32, 32) and y.dtype == torch.int64
    value = x[:, 0] * 255 / 30
    exact = (value - value.round()).abs() < 1e-3
    # inside a block: the pixel and its 4 neighbours show the same exact colour
    same = torch.zeros_like(exact)
    v = value.round()
    same[:, 1:-1, 1:-1] = ((v[:, 1:-1, 1:-1] == v[:, :-2, 1:-1]) & (v[:, 1:-1, 1:-1] == v[:, 2:, 1:-1])
                           & (v[:, 1:-1, 1:-1] == v[:, 1:-1, :-2]) & (v[:, 1:-1, 1:-1] == v[:, 1:-1, 2:])
                           & exact[:, 1:-1, 1:-1] & exact[:, :-2, 1:-1] & exact[:, 2:, 1:-1]
                           & exact[:, 1:-1, :-2] & exact[:, 1:-1, 2:])
    exact = same
    assert exact.float().mean() > 0.3
    assert torch.equal(value.round().long()[exact], y[exact])
    cx, cy = _batch(images, np.arange(4), 32, None, maps)  # centre crop: a plain slice
    assert torch.equal(cy, torch.from_numpy(maps[:, 8:40, 8:40].astype(np.int64)))


def test_a_tiny_segmentation_pretraining_is_bit_reproducible_and_loads_into_the_segmenter():
    torch.set_num_threads(1)
    cfg = recipe("resnet-tiny", task="segmentation", geometry="segmenter", **TINY)
    a, b = pretrain(cfg), pretrain(cfg)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert 0 < a.heldout_accuracy == b.heldout_accuracy <= 1  # pixel accuracy
    assert {"shape_accuracy", "texture_accuracy"} <= set(a.heldout_scores)
    seg = build_segmenter(SegmenterConfig(backbone="resnet-tiny", init="scratch"), 19)
    seg.backbone.body.load_state_dict(a.state_dict, strict=True)
    classification = pretrain(recipe("resnet-tiny", task="classification", geometry="segmenter",
                                     **TINY)).state_dict
    assert any(not torch.equal(a.state_dict[k], classification[k]) for k in a.state_dict
               if a.state_dict[k].is_floating_point())


def test_bad_settings_fail_before_any_work():
    with pytest.raises(ConfigError, match="task"):
        PretrainConfig(task="detection")
    with pytest.raises(ConfigError, match="segmenter geometry"):
        PretrainConfig(task="segmentation")  # a dense task is not trained at output stride 32
    with pytest.raises(ConfigError, match="geometry"):
        PretrainConfig(geometry="dilated")
    with pytest.raises(UserError, match="unknown backbone"):
        pretrain(recipe("resnet-tinyy"))
    with pytest.raises(ConfigError, match="crop"):
        PretrainConfig(crop=128)
    with pytest.raises(ConfigError, match="optimizer"):
        PretrainConfig(optimizer="adam")


# --------------------------------------------------------------------------- shipped weights

def test_the_shipped_weights_match_their_sidecars_and_the_current_recipe():
    assert set(SHIPPED) <= set(pretrained.available())
    for backbone in SHIPPED:
        path = pretrained.weights_path(backbone)
        meta = pretrained.sidecar(backbone)
        assert path.parent == pretrained.WEIGHTS_DIR and path.name == f"{backbone}.safetensors"
        assert meta["sha256"] == pretrained.sha256_of(path)
        assert meta["bytes"] == path.stat().st_size <= 5 * 1024 * 1024
        assert meta["command"] == pretrained.rebuild_command(backbone)
        # built by today's generator and recipe: a change to either needs a rebuild
        cfg = recipe(backbone)
        assert meta["generator"]["key"] == cfg.data.key()
        assert meta["training"] == json.loads(json.dumps(cfg.to_dict()))
        assert 0 < meta["results"]["heldout_accuracy"] <= 1


@pytest.mark.parametrize("backbone", SHIPPED)
def test_the_shipped_weights_load_strictly_into_the_minicity_segmenter(backbone):
    from safetensors.torch import load_file

    state = load_file(str(pretrained.weights_path(backbone)))
    seg = build_segmenter(SegmenterConfig(backbone=backbone, init="scratch"), 19)
    seg.backbone.body.load_state_dict(state, strict=True)
    # and through the existing weights-file route, with nothing left out or renamed
    seg = build_segmenter(SegmenterConfig(backbone=backbone, init=str(pretrained.weights_path(
        backbone))), 19)
    loaded = seg.backbone.body.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items()) and not seg.init_notes
    with torch.no_grad():
        out = seg.eval()(torch.rand(1, 3, 32, 64))["out"]
    assert torch.isfinite(out).all()


def test_weights_path_refuses_damaged_missing_and_unknown_weights(tmp_path):
    for name in ("resnet-tiny.safetensors", "resnet-tiny.json"):
        shutil.copy(pretrained.WEIGHTS_DIR / name, tmp_path / name)
    assert pretrained.weights_path("resnet-tiny", tmp_path) == tmp_path / "resnet-tiny.safetensors"
    data = bytearray((tmp_path / "resnet-tiny.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "resnet-tiny.safetensors").write_bytes(bytes(data))
    cmd = "python bench/pretrain_minicity.py --backbone resnet-tiny --out udabench/minicity/weights/"
    for call, match in ((lambda: pretrained.weights_path("resnet-tiny", tmp_path), "do not match"),
                        (lambda: pretrained.weights_path("mit-tinyy", tmp_path), "no MiniCity")):
        with pytest.raises(UserError, match=match) as err:
            call()
        assert "\n" not in str(err.value) and "bench/pretrain_minicity.py" in str(err.value)
    (tmp_path / "resnet-tiny.safetensors").unlink()
    with pytest.raises(UserError, match="missing") as err:
        pretrained.weights_path("resnet-tiny", tmp_path)
    assert cmd in str(err.value)
    (tmp_path / "resnet-tiny.json").write_text('{"format": 1, "file": "../x.safetensors"}')
    with pytest.raises(UserError, match="unreadable sidecar"):
        pretrained.weights_path("resnet-tiny", tmp_path)


def _bench_module(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "0")  # restored after the test; the script sets it
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    spec = importlib.util.spec_from_file_location("pretrain_minicity",
                                                  REPO / "bench" / "pretrain_minicity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_records_the_rebuild_command_and_refuses_a_bad_backbone(monkeypatch, tmp_path,
                                                                           capsys):
    bench = _bench_module(monkeypatch)
    for backbone in SHIPPED:
        args = bench.parse_args(["--backbone", backbone, "--out", "udabench/minicity/weights/"])
        assert bench.command_line(args) == pretrained.rebuild_command(backbone)
    args = bench.parse_args(["--backbone", "mit-tiny", "--out", "w", "--seed", "2", "--threads", "2"])
    assert bench.command_line(args).endswith("--out w/ --seed 2 --threads 2")
    assert bench.main(["--backbone", "nope", "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "unknown backbone" in err and "\n" not in err
    assert not list((tmp_path / "w").glob("*"))


def test_the_weights_ship_in_the_package():
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "minicity/weights/*" in data["package-data"]["udabench"]
    assert "udabench.minicity" in data["packages"]
