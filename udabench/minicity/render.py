"""One MiniCity image: layout of a variant (dataset) drawn in the style of a domain."""
from __future__ import annotations

import zlib

import numpy as np

from udabench import taxonomy
from udabench.minicity.canvas import EGO, LANE, N_CODES, RAIL, STATIC, VOID, Canvas
from udabench.minicity.materials import M
from udabench.minicity.params import MiniCityParams
from udabench.minicity.populate import draw_layers, populate
from udabench.minicity.scene import (CITYSCAPES, GTA5, SYNTHIA, Layout, blend, draw_facades,
                                     draw_ground, draw_sky_and_skyline, sample_camera, sample_street)
from udabench.minicity.style import render_game, render_real

DOMAINS = ("game", "real")
VARIANTS = ("gta5", "synthia", "cityscapes")


def _lut(pairs: dict[int, int], dtype) -> np.ndarray:
    lut = np.zeros(N_CODES, dtype=dtype)
    for code, value in pairs.items():
        lut[code] = value
    lut.setflags(write=False)
    return lut


_CLASS_LABEL_IDS = {c.train_id: c.label_id for c in taxonomy.CLASSES}
# scene code -> the raw label each dataset stores (non-class codes exercise the mapping to 255)
CODE_TO_LABEL_ID = _lut({**_CLASS_LABEL_IDS, LANE: 7, EGO: 1, STATIC: 4, VOID: 0, RAIL: 10}, np.uint8)
CODE_TO_SYNTHIA_ID = _lut({**taxonomy.TRAIN_ID_TO_SYNTHIA_ID, LANE: 22}, np.uint16)  # others void 0
CODE_TO_TRAIN_ID = {
    "gta5": taxonomy.LABEL_ID_TO_TRAIN_ID[CODE_TO_LABEL_ID],
    "cityscapes": taxonomy.LABEL_ID_TO_TRAIN_ID[CODE_TO_LABEL_ID],
    "synthia": taxonomy.SYNTHIA_TO_TRAIN_ID[CODE_TO_SYNTHIA_ID],  # lane marks are ignored there
}


def layout_of(variant: str, params: MiniCityParams) -> Layout:
    if variant == "gta5":
        return GTA5
    if variant == "synthia":
        return SYNTHIA
    return blend(GTA5, CITYSCAPES, params.layout_shift)


def _check(domain: str, variant: str, seed: int) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"unknown MiniCity domain '{domain}'; expected one of {DOMAINS}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown MiniCity variant '{variant}'; expected one of {VARIANTS}")
    if seed < 0:
        raise ValueError(f"MiniCity seed must be >= 0, got {seed}")


def build_scene(seed: int, height: int, width: int, variant: str, params: MiniCityParams) -> Canvas:
    """Labels and paints of one scene; the layout depends on (seed, variant) only."""
    rng = np.random.default_rng([seed, zlib.crc32(variant.encode())])
    lay = layout_of(variant, params)
    cv = Canvas(height, width)
    street = sample_street(rng, lay)
    cam = sample_camera(rng, height, width, lay, street)
    park, line, things = populate(rng, street, lay)  # decides the tram (rails are ground)
    draw_sky_and_skyline(cv, cam, rng, street)
    draw_ground(cv, cam, street, lay)
    draw_facades(cv, cam, rng, street)
    draw_layers(cv, cam, park, line, things)
    if rng.random() < lay.p_ego:  # the ego vehicle's hood along the bottom edge
        hh = height * rng.uniform(0.04, 0.1)
        cv.ellipse(width * rng.uniform(0.45, 0.55), height + hh * 0.8, width * 0.75, hh * 1.8, EGO,
                   cv.new_paint(M["hood"], cv.new_instance()))
    return cv


def render_full(seed: int, height: int, width: int, domain: str, variant: str,
                params: MiniCityParams) -> tuple[np.ndarray, Canvas]:
    """(HxWx3 uint8 RGB, the canvas with label codes, paints and instances)."""
    _check(domain, variant, seed)
    cv = build_scene(seed, height, width, variant, params)
    rng = np.random.default_rng([seed, zlib.crc32(domain.encode()), 1])
    rgb = render_game(cv, params, rng) if domain == "game" else render_real(cv, params, rng)
    return rgb, cv


def render_scene(seed: int, height: int, width: int, domain: str, variant: str,
                 params: MiniCityParams) -> tuple[np.ndarray, np.ndarray]:
    """(HxWx3 uint8 RGB, HxW uint8 trainIds with 255 = ignore) as the variant's loader sees them."""
    rgb, cv = render_full(seed, height, width, domain, variant, params)
    return rgb, CODE_TO_TRAIN_ID[variant][cv.code]


_IS_THING = _lut({c: 1 for c in range(11, 19)}, np.uint16)


def instance_map(cv: Canvas) -> np.ndarray:
    """uint16 instance ids of things (person..bicycle), 0 elsewhere (SYNTHIA's green channel)."""
    insts = np.array([p[1] for p in cv.paints], dtype=np.uint16)
    inst = np.take(insts, cv.paint, mode="clip")
    inst *= np.take(_IS_THING, cv.code, mode="clip")  # multiply, not mask-assign: much faster
    return inst
