"""The third procedural domain MiniCity's networks are pretrained on, in ImageNet's place.

Real UDA methods start from ImageNet classification weights: generic features (edges, textures,
colours, object shapes) learnt on photographs of objects that are neither the segmentation task
nor either domain of the benchmark. This module makes the MiniCity counterpart: object-centric
classification images whose 64 classes are generic visual concepts, one of 8 shapes filled with
one of 8 textures ("striped star", "dotted ring", ...), never the 19 street classes and never a
street layout. The style is neither MiniCity's flat "game" one nor its "real" one: saturated
hues from the whole colour circle (each class has a typical hue, tight for some classes, loose or
absent for others, as colour is a partial cue in ImageNet), two-colour patterned materials, a
directional light with shading, highlight and drop shadow, a per-image tinted light, anti-aliased
edges (rendered at 2x and averaged), cluttered patterned backgrounds with smaller distractor
objects (as ImageNet photos have), and a mild gamma change and grain.
docs/minicity_pretraining.md explains the choices.

Every image is a pure function of (params, split, index), so any subset can be rendered in any
order, and the class of image ``index`` is ``index % N_CLASSES``: every split is exactly balanced.

    images, labels = render_split(PretrainDataParams(), "train")   # (N, 72, 72, 3) uint8, (N,)
    images, labels = load_split(PretrainDataParams(), "train", cache_root=Path("data"))
                      # the same arrays, kept in <data_root>/minicity-pretrain/<key>/train.npz
"""
from __future__ import annotations

import colorsys
import hashlib
import json
import math
import os
import zipfile
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np

from udabench.errors import ConfigError, DataError

# Bump whenever a change alters the rendered pixels: it is part of the key recorded with weights.
PRETRAIN_GENERATOR_VERSION = 2

SHAPES = ("disc", "ring", "triangle", "square", "star", "cross", "crescent", "heart")
TEXTURES = ("plain", "striped", "checkered", "dotted", "blotched", "grainy", "wavy", "ringed")
CLASSES = tuple(f"{texture} {shape}" for shape in SHAPES for texture in TEXTURES)
N_CLASSES = len(CLASSES)
BACKGROUND = N_CLASSES  # the label of background pixels in the dense (segmentation) maps
SPLITS = ("train", "val")
SUPERSAMPLE = 2  # rendered at 2x and box-averaged: anti-aliased edges (MiniCity's are hard)
# Every shape lies within 1.3 object radii of its centre (the heart reaches 1.29), times the
# largest aspect stretch (1.25): objects are drawn inside a square of this half-width.
REACH = 1.3 * 1.25
# Colour is a cue for some classes, as in ImageNet (a lemon is yellow, a car any colour): each
# class has a base hue and a spread, narrow for a third of the classes, wide for a third, none
# (any hue) for the rest. Neighbouring hues overlap, so colour alone never names a class.
_PALETTE = np.random.default_rng(20260103)
CLASS_HUE = _PALETTE.random(len(CLASSES))
CLASS_HUE_SPREAD = _PALETTE.permutation(np.resize(np.array([0.04, 0.12, np.inf]), len(CLASSES)))


@dataclass(frozen=True)
class PretrainDataParams:
    """Every field changes the generated data (and the key)."""

    seed: int = 0
    size: int = 72  # square image side in pixels (training takes random 64x64 crops)
    n_train_per_class: int = 300
    n_val_per_class: int = 40

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"pretrain data {f.name} = {value!r}: expected an integer")
        if self.seed < 0:
            raise ConfigError(f"pretrain data seed = {self.seed}: expected >= 0")
        if self.size < 16:
            raise ConfigError(f"pretrain data size = {self.size}: expected at least 16 pixels")
        for name in ("n_train_per_class", "n_val_per_class"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pretrain data {name} = {getattr(self, name)}: expected >= 1")

    def count(self, split: str) -> int:
        _check_split(split)
        per_class = self.n_train_per_class if split == "train" else self.n_val_per_class
        return per_class * N_CLASSES

    def to_dict(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        """Short stable hash of all fields and PRETRAIN_GENERATOR_VERSION."""
        blob = json.dumps({"generator_version": PRETRAIN_GENERATOR_VERSION, **asdict(self)},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"pretrain data split '{split}': expected one of {', '.join(SPLITS)}")


def class_of(index: int) -> int:
    """Class of image ``index`` of any split (round robin: splits are exactly balanced)."""
    return index % N_CLASSES


def class_parts(label: int) -> tuple[str, str]:
    """(shape, texture) of a class index."""
    return SHAPES[label // len(TEXTURES)], TEXTURES[label % len(TEXTURES)]


def class_hue(label: int, rng: np.random.Generator) -> float:
    """A hue in [0, 1) for an object of class ``label``: around its class hue, or any."""
    spread = CLASS_HUE_SPREAD[label]
    if not np.isfinite(spread):
        return float(rng.random())
    return float((CLASS_HUE[label] + spread * rng.standard_normal()) % 1.0)


# ------------------------------------------------------------------------------------ shapes

def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of a shape of radius ~1 in object coordinates (u right, v up)."""
    if shape == "disc":
        return u * u + v * v <= 1.0
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.55 ** 2)
    if shape == "triangle":  # equilateral, inscribed in the unit circle, apex up
        return ((v >= -0.5) & (math.sqrt(3) * u + v <= 1.0) & (-math.sqrt(3) * u + v <= 1.0))
    if shape == "square":
        return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
    if shape == "star":  # five points, outer radius 1, inner radius 0.42
        return np.hypot(u, v) <= _star_radius(np.arctan2(v, u))
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if shape == "crescent":
        return (u * u + v * v <= 1.0) & ((u - 0.5) ** 2 + v * v > 0.8 ** 2)
    if shape == "heart":  # (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, scaled to radius ~1
        x, y = u * 1.2, v * 1.2 - 0.15
        return (x * x + y * y - 1.0) ** 3 - x * x * y ** 3 <= 0.0
    raise ValueError(f"unknown shape '{shape}'")


def _star_radius(theta: np.ndarray, outer: float = 1.0, inner: float = 0.42) -> np.ndarray:
    """Distance from the centre to the star's outline along direction theta (apex at +90 deg)."""
    sector = 2 * math.pi / 5
    a = np.mod(theta - math.pi / 2, sector)
    a = np.minimum(a, sector - a)  # angle from the nearest point, in [0, sector / 2]
    p1 = np.array([outer, 0.0])
    p2 = inner * np.array([math.cos(sector / 2), math.sin(sector / 2)])
    normal = np.array([p2[1] - p1[1], p1[0] - p2[0]])  # perpendicular to the edge p1 -> p2
    return (normal @ p1) / (normal[0] * np.cos(a) + normal[1] * np.sin(a))


# ---------------------------------------------------------------------------------- textures

def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of a small 2-D grid to (h, w)."""
    gy = np.linspace(0, grid.shape[0] - 1, h, dtype=np.float32)
    gx = np.linspace(0, grid.shape[1] - 1, w, dtype=np.float32)
    y0 = np.minimum(gy.astype(int), grid.shape[0] - 2)
    x0 = np.minimum(gx.astype(int), grid.shape[1] - 2)
    fy, fx = (gy - y0)[:, None], (gx - x0)[None, :]
    rows = grid[y0] * (1 - fy) + grid[y0 + 1] * fy
    return rows[:, x0] * (1 - fx) + rows[:, x0 + 1] * fx


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth random field of unit std with features about ``cell`` pixels wide."""
    h, w = shape
    grid = rng.standard_normal((max(int(h / cell), 1) + 2, max(int(w / cell), 1) + 2))
    field = _upsample(grid.astype(np.float32), h, w)
    return (field - field.mean()) / (field.std() + 1e-6)


def _soft(s: np.ndarray, width: float = 0.35) -> np.ndarray:
    """Smooth step of a signal in [-1, 1] to [0, 1]: two-tone bands with soft edges."""
    return np.clip(0.5 + s / (2 * width), 0.0, 1.0)


def texture_field(texture: str, rng: np.random.Generator, x: np.ndarray, y: np.ndarray,
                  scale: float) -> np.ndarray:
    """Mix weight in [0, 1] between a material's two colours; x, y (same 2-D shape) in
    supersampled pixels of a frame rotated with the pattern, ``scale`` = supersampled pixels
    per output pixel (pattern sizes are set in output pixels)."""
    shape = x.shape
    period = rng.uniform(4.0, 9.0) * scale
    tau = 2 * math.pi / period
    if texture == "plain":  # one colour with a faint low-frequency variation
        return 0.12 * _value_noise(rng, shape, 12 * scale) + 0.1
    if texture == "striped":
        return _soft(np.sin(tau * x))
    if texture == "checkered":
        return _soft(np.sin(tau * x) * np.sin(tau * y), 0.2)
    if texture == "dotted":
        fx = x / period - np.floor(x / period) - 0.5
        fy = y / period - np.floor(y / period) - 0.5
        radius = rng.uniform(0.22, 0.34)
        return _soft((radius - np.hypot(fx, fy)) * 8.0)
    if texture == "blotched":  # two-tone camouflage
        return _soft(_value_noise(rng, shape, 1.6 * period), 0.25)
    if texture == "grainy":  # fine speckle of both colours
        return np.clip(0.5 + 0.35 * _value_noise(rng, shape, 1.3 * scale), 0.0, 1.0)
    if texture == "wavy":
        amp, wave = rng.uniform(0.35, 0.7) * period, rng.uniform(2.5, 4.0) * period
        return _soft(np.sin(tau * (x + amp * np.sin(2 * math.pi * y / wave))))
    if texture == "ringed":  # concentric rings around a point near the object's centre
        cx, cy = rng.uniform(-0.3, 0.3, 2) * period * 3
        return _soft(np.sin(tau * np.hypot(x - cx, y - cy)))
    raise ValueError(f"unknown texture '{texture}'")


# ------------------------------------------------------------------------------------ style

def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _material(rng: np.random.Generator, hue: float, contrast: float) -> tuple[np.ndarray, np.ndarray]:
    """Two colours of a patterned material: a saturated base and a second tone that differs
    in value by at least ``contrast`` (the pattern must show in luminance) and, half the time,
    in hue as well."""
    s1, v1 = rng.uniform(0.45, 0.95), rng.uniform(0.35, 1.0)
    v2 = v1 - contrast if v1 - contrast >= 0.12 else v1 + contrast
    v2 = float(np.clip(v2, 0.05, 1.0))
    hue2 = hue + (rng.uniform(0.15, 0.85) if rng.random() < 0.5 else rng.normal(0.0, 0.04))
    return _hsv(hue, s1, v1), _hsv(hue2, rng.uniform(0.3, 0.95), v2)


@dataclass(frozen=True)
class _Window:
    """The square of supersampled pixels an object can cover, and its pixel-centre coordinates
    relative to the object centre (x right, y up)."""

    rows: slice
    cols: slice
    x: np.ndarray  # (1, w)
    y: np.ndarray  # (h, 1)


def _window(n: int, cx: float, cy: float, extent: float) -> _Window | None:
    c0, c1 = max(int(cx - extent), 0), min(int(math.ceil(cx + extent)), n)
    r0, r1 = max(int(cy - extent), 0), min(int(math.ceil(cy + extent)), n)
    if c1 <= c0 or r1 <= r0:
        return None
    x = (np.arange(c0, c1, dtype=np.float32) + 0.5 - cx)[None, :]
    y = (cy - 0.5 - np.arange(r0, r1, dtype=np.float32))[:, None]
    return _Window(slice(r0, r1), slice(c0, c1), x, y)


def _object_coords(win: _Window, radius: float, angle: float, aspect: float):
    """Object coordinates (u right, v up, radius 1) of a window's pixels."""
    ca, sa = math.cos(angle), math.sin(angle)
    u = (ca * win.x + sa * win.y) * (1 / (radius * aspect))
    v = (ca * win.y - sa * win.x) * (aspect / radius)
    return u, v


def _paint(rng: np.random.Generator, texture: str, h: int, w: int, hue: float, contrast: float,
           scale: float) -> np.ndarray:
    """(h, w, 3) float32 image of a material with its pattern in a random orientation."""
    a, b = _material(rng, hue, contrast)
    angle = rng.uniform(0, math.pi)
    cx = np.arange(w, dtype=np.float32)[None, :] - w / 2
    cy = np.arange(h, dtype=np.float32)[:, None] - h / 2
    x = math.cos(angle) * cx + math.sin(angle) * cy
    y = math.cos(angle) * cy - math.sin(angle) * cx
    t = texture_field(texture, rng, x, y, scale).astype(np.float32)
    return a + (b - a) * t[..., None]


def _box_blur(img: np.ndarray, k: int) -> np.ndarray:
    """Separable box blur of a 2-D array (edges clamped)."""
    pad = k // 2
    p = np.pad(img, pad, mode="edge")
    c = np.cumsum(np.pad(p, ((1, 0), (0, 0))), axis=0)
    p = (c[k:] - c[:-k]) * (1 / k)
    c = np.cumsum(np.pad(p, ((0, 0), (1, 0))), axis=1)
    return (c[:, k:] - c[:, :-k]) * (1 / k)


def _draw(img: np.ndarray, rng: np.random.Generator, shape: str, texture: str, cx: float,
          cy: float, radius: float, hue: float, contrast: float, scale: float,
          label_map: np.ndarray | None = None, label: int = 0) -> None:
    """Paint one patterned shape into ``img`` (in place), clipped to the image; with
    ``label_map``, write ``label`` where it is painted."""
    angle, aspect = rng.uniform(0, 2 * math.pi), rng.uniform(0.8, 1.25)
    win = _window(img.shape[0], cx, cy, radius * REACH)
    if win is None:
        return
    u, v = _object_coords(win, radius, angle, aspect)
    mask = shape_mask(shape, u, v)
    h, w = mask.shape
    look = _paint(rng, texture, h, w, hue, contrast, scale)
    region = img[win.rows, win.cols]
    np.copyto(region, look, where=mask[..., None])
    if label_map is not None:
        label_map[win.rows, win.cols][mask] = label


def render_image(params: PretrainDataParams, split: str, index: int) -> tuple[np.ndarray, int]:
    """(size x size x 3 uint8 RGB, class index) of image ``index`` of ``split``."""
    return _render(params, split, index, None)


def render_image_dense(params: PretrainDataParams, split: str, index: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(size x size x 3 uint8 RGB, size x size uint8 label map) of image ``index``: the same
    pixels as :func:`render_image`, and for every pixel the class of the object painted on it
    (the main object, or a distractor where it shows) or ``BACKGROUND``. A pixel takes the
    label of its first (upper-left) supersample."""
    label_map = np.full((params.size * SUPERSAMPLE,) * 2, BACKGROUND, dtype=np.uint8)
    image, _ = _render(params, split, index, label_map)
    return image, np.ascontiguousarray(label_map[::SUPERSAMPLE, ::SUPERSAMPLE])


def _render(params: PretrainDataParams, split: str, index: int,
            label_map: np.ndarray | None) -> tuple[np.ndarray, int]:
    """Image ``index`` of ``split`` and its class; fills ``label_map`` (supersampled) when given.
    The label map never changes a random draw: the pixels are those of the classification data."""
    _check_split(split)
    if not 0 <= index < params.count(split):
        raise ValueError(f"index {index} outside the {params.count(split)} {split} images")
    label = class_of(index)
    shape, texture = class_parts(label)
    rng = np.random.default_rng([params.seed, zlib.crc32(split.encode()), index])
    n = params.size * SUPERSAMPLE
    scale = float(SUPERSAMPLE)
    hue = class_hue(label, rng)
    # background: a low-contrast pattern of any texture, its hue well away from the object's,
    # lit by a gradient from the light's side
    img = _paint(rng, TEXTURES[rng.integers(len(TEXTURES))], n, n, hue + rng.uniform(0.2, 0.8),
                 rng.uniform(0.1, 0.3), scale)
    img *= np.float32(0.7 + 0.3 * rng.random())
    light = rng.uniform(0, 2 * math.pi)
    lx, ly = math.cos(light), math.sin(light)
    ramp = np.linspace(-1, 1, n, dtype=np.float32)
    img *= (1 + rng.uniform(0.05, 0.25) * (lx * ramp[None, :] - ly * ramp[:, None]))[..., None]
    # clutter: up to two smaller objects of any class, behind the main one
    for _ in range(int(rng.choice(3, p=(0.4, 0.35, 0.25)))):
        other = int(rng.integers(N_CLASSES))
        _draw(img, rng, *class_parts(other), rng.uniform(0, n), rng.uniform(0, n),
              n * rng.uniform(0.08, 0.15), class_hue(other, rng), rng.uniform(0.25, 0.5), scale,
              label_map, other)
    # the object: a drop shadow away from the light, then its shape in its material
    radius = n * rng.uniform(0.24, 0.38)
    cx, cy = n / 2 + rng.uniform(-0.12, 0.12) * n, n / 2 + rng.uniform(-0.12, 0.12) * n
    angle, aspect = rng.uniform(0, 2 * math.pi), rng.uniform(0.8, 1.25)
    shift = radius * rng.uniform(0.08, 0.2)
    win = _window(n, cx - shift * lx, cy + shift * ly, radius * REACH + 2)
    u, v = _object_coords(win, radius, angle, aspect)
    shadow = _box_blur(shape_mask(shape, u, v).astype(np.float32), max(int(radius * 0.15), 1) | 1)
    img[win.rows, win.cols] *= (1 - np.float32(rng.uniform(0.3, 0.55)) * shadow)[..., None]
    win = _window(n, cx, cy, radius * REACH)
    u, v = _object_coords(win, radius, angle, aspect)
    mask = shape_mask(shape, u, v)
    h, w = mask.shape
    obj = _paint(rng, texture, h, w, hue, rng.uniform(0.3, 0.6), scale)
    # shading: brighter towards the light, optionally a soft specular highlight on that side
    xs, ys = win.x * (1 / radius), win.y * (1 / radius)
    shade = 1 + np.float32(rng.uniform(0.15, 0.35)) * np.clip(lx * xs + ly * ys, -1.5, 1.5)
    obj *= shade[..., None]
    if rng.random() < 0.6:
        spot = np.exp(((xs - 0.45 * lx) ** 2 + (ys - 0.45 * ly) ** 2) * np.float32(-8.0))
        obj += np.float32(rng.uniform(0.2, 0.45)) * spot[..., None]
    np.copyto(img[win.rows, win.cols], obj, where=mask[..., None])
    if label_map is not None:
        label_map[win.rows, win.cols][mask] = label
    # anti-aliasing (2x2 box average), then the camera: tinted light, gamma, grain
    s = params.size
    img = img.reshape(s, SUPERSAMPLE, s, SUPERSAMPLE, 3).mean(axis=(1, 3))
    img *= (1 + rng.normal(0.0, 0.08, 3)).astype(np.float32)
    np.clip(img, 0.0, 1.0, out=img)
    img = 255.0 * img ** np.float32(rng.uniform(0.8, 1.25))
    img += rng.normal(0.0, rng.uniform(0.5, 3.0), img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), label


def render_split(params: PretrainDataParams, split: str, count: int | None = None,
                 progress: Callable[[int], None] | None = None, dense: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` images of a split (all by default): ((N, S, S, 3) uint8, labels), the
    labels (N,) int64 classes, or with ``dense`` (N, S, S) uint8 label maps
    (:func:`render_image_dense`). A ``count`` that is a multiple of N_CLASSES keeps the subset
    balanced."""
    total = params.count(split)
    count = total if count is None else count
    if not 0 < count <= total:
        raise ValueError(f"count {count} outside 1..{total} for the {split} split")
    size = params.size
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = (np.empty((count, size, size), dtype=np.uint8) if dense
              else np.empty(count, dtype=np.int64))
    render = render_image_dense if dense else render_image
    for i in range(count):
        images[i], labels[i] = render(params, split, i)
        if progress is not None and (i + 1) % 1000 == 0:
            progress(i + 1)
    return images, labels


CACHE_DIR = "minicity-pretrain"


def cache_path(params: PretrainDataParams, split: str, data_root: Path, dense: bool = False) -> Path:
    """<data_root>/minicity-pretrain/<key>/<split>.npz (<split>-dense.npz with label maps)"""
    _check_split(split)
    name = f"{split}-dense.npz" if dense else f"{split}.npz"
    return Path(data_root).expanduser() / CACHE_DIR / params.key() / name


def _cached_labels_ok(labels: np.ndarray, params: PretrainDataParams, split: str,
                      dense: bool) -> bool:
    n, s = params.count(split), params.size
    if dense:  # every map holds the class of its image somewhere, and only known labels
        return (labels.shape == (n, s, s) and labels.dtype == np.uint8
                and int(labels.max(initial=0)) <= BACKGROUND
                and all((labels[i] == class_of(i)).any() for i in range(0, n, max(n // 64, 1))))
    return np.array_equal(labels, np.array([class_of(i) for i in range(n)], dtype=np.int64))


def load_split(params: PretrainDataParams, split: str, cache_root: Path | None = None,
               progress: Callable[[int], None] | None = None, dense: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """A whole split, rendered in memory, or read from / written to the cache under
    ``cache_root`` (a data root) when given. A cache file that does not hold what
    :func:`render_split` would return (wrong shape, count or labels, unreadable) is rendered
    again; writes are atomic, so an interrupted run never leaves a half file behind."""
    if cache_root is None:
        return render_split(params, split, progress=progress, dense=dense)
    path = cache_path(params, split, cache_root, dense)
    n, s = params.count(split), params.size
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
        if (images.shape == (n, s, s, 3) and images.dtype == np.uint8
                and _cached_labels_ok(labels, params, split, dense)):
            return images, labels
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # missing or damaged: render it again
    images, labels = render_split(params, split, progress=progress, dense=dense)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, images=images, labels=labels)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot write the pretraining cache {path}: {exc.strerror or exc}; free "
                        f"space or choose another data root") from None
    return images, labels
