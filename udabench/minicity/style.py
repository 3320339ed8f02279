"""Turning a painted canvas into an RGB image, in the "game" or the "real" style.

Each paint (material, instance, shade, shadowed) gets one colour in a small table, then the image
is one gather. The game style stops there: flat, saturated colours with a small per-instance
variation and clean edges. The real style changes, with strengths from MiniCityParams:
- class-consistent materials (REAL_RGB, larger per-instance spread: cars of many colours),
- stronger face shading and cast shadows, vignetting,
- a global camera response (white balance, exposure, saturation, contrast, haze),
- per-material textures (fine grain for foliage/asphalt, coarse mottling, clouds),
- blur, then sensor noise.
Noise and texture fields are cut from per-size banks built once per process from a fixed seed at a
random per-image offset, which is deterministic and ~10x cheaper than drawing fresh noise.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from udabench.minicity import materials as mt
from udabench.minicity.canvas import Canvas
from udabench.minicity.params import MiniCityParams

_BANK_SEED = 20240917
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _paint_arrays(cv: Canvas):
    arr = np.array(cv.paints, dtype=np.float64)
    mats, insts = arr[:, 0].astype(np.intp), arr[:, 1].astype(np.intp)
    return mats, insts, arr[:, 2].astype(np.float32), arr[:, 3] > 0


def _jitter(rng: np.random.Generator, cv: Canvas, mats: np.ndarray, insts: np.ndarray) -> np.ndarray:
    """(P, 4) standard normals shared by all paints of one (instance, material)."""
    z = rng.standard_normal((cv.n_instances + 1, len(mt.NAMES), 4)).astype(np.float32)
    return z[insts, mt.JITTER_OF[mats]]


def paint_colours(cv: Canvas, domain: str, params: MiniCityParams,
                  rng: np.random.Generator) -> np.ndarray:
    """(P, 3) float32 colour of every paint, before textures and camera effects."""
    mats, insts, shade, shadowed = _paint_arrays(cv)
    z = _jitter(rng, cv, mats, insts)
    if domain == "game":
        base, spread = mt.GAME_RGB[mats], np.full(len(mats), params.game_jitter, np.float32)
        k_shade, k_shadow = 0.15, 0.2
    else:
        base = mt.GAME_RGB[mats] + params.class_shift * (mt.REAL_RGB[mats] - mt.GAME_RGB[mats])
        spread = mt.REAL_SPREAD[mats] * params.instance_spread
        k_shade, k_shadow = 0.3 * params.lighting, min(0.45 * params.lighting, 0.8)
    emissive = mt.EMISSIVE[mats]
    spread = np.where(emissive, 0.0, spread)[:, None]
    col = base * np.clip(1 + spread * (z[:, :1] + 0.35 * z[:, 1:]), 0.2, 3.0)
    light = np.where(emissive, 1.0, (1 + k_shade * shade) * np.where(shadowed, 1 - k_shadow, 1.0))
    col = col * light[:, None].astype(np.float32)
    if domain == "real":
        col = _camera_response(col, params.colour_shift, rng)
    return np.clip(col, 0, 255).astype(np.float32)


def _camera_response(col: np.ndarray, cs: float, rng: np.random.Generator) -> np.ndarray:
    """Global colour change of the target camera (systematic part + per-image variation)."""
    luma = col @ _LUMA
    sat = max(0.0, 1 - cs * rng.uniform(0.25, 0.45))
    col = luma[:, None] + sat * (col - luma[:, None])
    gains = 1 + cs * (np.array([0.04, 0.02, -0.07]) + rng.normal(0, 0.04, 3))
    exposure = np.exp(cs * rng.normal(-0.08, 0.15))
    col = np.clip(col * gains * exposure, 0, 255)
    gamma = max(0.3, 1 + cs * rng.uniform(-0.05, 0.25))
    col = 255 * (col / 255) ** gamma
    haze = min(0.9, 0.1 * cs * rng.uniform(0.5, 1.5))
    return (col * (1 - haze) + haze * 150.0).astype(np.float32)


def render_game(cv: Canvas, params: MiniCityParams, rng: np.random.Generator) -> np.ndarray:
    table = np.rint(paint_colours(cv, "game", params, rng)).astype(np.uint8)
    return np.take(table, cv.paint, axis=0, mode="clip")


def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of a small 2-D grid to (h, w)."""
    gy = np.linspace(0, grid.shape[0] - 1, h)
    gx = np.linspace(0, grid.shape[1] - 1, w)
    y0 = np.minimum(gy.astype(int), grid.shape[0] - 2)
    x0 = np.minimum(gx.astype(int), grid.shape[1] - 2)
    fy, fx = (gy - y0)[:, None], (gx - x0)[None, :]
    a, b = grid[y0][:, x0], grid[y0][:, x0 + 1]
    c, d = grid[y0 + 1][:, x0], grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _binomial(a: np.ndarray, axis: int, step: int = 1) -> np.ndarray:
    """One [1, 2, 1]/4 pass along an axis between elements `step` apart (3 = same channel of
    interleaved RGB); variance 0.5 px^2, edges kept; float or integer (rounded)."""
    out = a.copy()
    idx = lambda sl: tuple(sl if d == axis else slice(None) for d in range(a.ndim))  # noqa: E731
    mid = out[idx(slice(step, -step))]
    np.add(a[idx(slice(None, -2 * step))], a[idx(slice(2 * step, None))], out=mid)
    mid += a[idx(slice(step, -step))]
    mid += a[idx(slice(step, -step))]
    if np.issubdtype(a.dtype, np.integer):
        mid += 2  # round to nearest
        mid >>= 2
    else:
        mid *= 0.25
    return out


_FIX = 16  # fixed-point scale of the integer stages (blur, noise): 255 * 16 * 2 fits int16


@lru_cache(maxsize=4)
def _banks(h: int, w: int):
    """Fields 1.5x the image size, read-only: fine grain, coarse mottling, unit RGB noise (planar),
    and squared distance from the centre (1 at the corners) for vignetting."""
    H, W = h + h // 2 + 1, w + w // 2 + 1
    rng = np.random.default_rng(_BANK_SEED)
    fine = _binomial(_binomial(rng.standard_normal((H, W)).astype(np.float32), 0), 1)
    fine /= fine.std()
    coarse = np.zeros((H, W), np.float64)
    for cell, amp in ((8, 0.5), (24, 1.0), (64, 0.8)):
        g = rng.standard_normal((max(H // cell, 2) + 2, max(W // cell, 2) + 2))
        coarse += amp * _upsample(g, H, W)
    coarse = (coarse / coarse.std()).astype(np.float32)
    noise = rng.standard_normal((3, H, W)).astype(np.float32)
    yy = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h - 0.5
    xx = (np.arange(w, dtype=np.float32)[None, :] + 0.5) / w - 0.5
    r2 = (xx * xx + yy * yy) * 2.0
    for a in (fine, coarse, noise, r2):
        a.setflags(write=False)
    return fine, coarse, noise, r2


@lru_cache(maxsize=4)
def _noise16(h: int, w: int, sigma: float) -> np.ndarray:
    """Sensor noise (H', 3W') in the fixed-point scale, the +0.5 rounding offset folded in."""
    noise = np.moveaxis(_banks(h, w)[2], 0, -1)
    out = np.rint(noise * (sigma * _FIX) + _FIX / 2).clip(-32000, 32000).astype(np.int16)
    out = out.reshape(out.shape[0], -1)  # 2-D: numpy iterates (rows, 3W) views much faster
    out.setflags(write=False)
    return out


def render_real(cv: Canvas, params: MiniCityParams, rng: np.random.Generator) -> np.ndarray:
    """Colour x texture on planar float32 (numpy broadcasts fast over the leading axis), then
    blur and noise on interleaved int16 fixed point (several times faster than float32; the
    interleaved layout is what PNG needs, and numpy's transposing copy is slow)."""
    h, w = cv.h, cv.w
    table = paint_colours(cv, "real", params, rng)
    mats = _paint_arrays(cv)[0]
    fine, coarse, _, r2 = _banks(h, w)
    oy, ox = int(rng.integers(0, h // 2 + 1)), int(rng.integers(0, w // 2 + 1))
    win = (slice(oy, oy + h), slice(ox, ox + w))
    coef = np.ascontiguousarray((mt.TEXTURE[mats] * params.texture).T, dtype=np.float32)  # (2, P)
    mod = np.take(coef[0], cv.paint, mode="clip")
    mod *= fine[win]
    t = np.take(coef[1], cv.paint, mode="clip")
    t *= coarse[win]
    mod += t
    mod += 1.0
    if params.lighting > 0:  # vignetting
        mod -= min(0.3 * params.lighting, 0.9) * r2
    np.clip(mod, 0.0, 2.0, out=mod)
    mod *= _FIX
    channels = np.ascontiguousarray(table.T)  # (3, P)
    rgb = np.empty((h, w, 3), dtype=np.int16)  # <= 255 * 2 * 16: fits
    for c in range(3):
        plane = np.take(channels[c], cv.paint, mode="clip")
        plane *= mod
        rgb[:, :, c] = plane
    sigma = params.blur * w / 512.0
    for _ in range(int(round(2 * sigma * sigma))):
        rgb = _binomial(rgb, 0)
        rgb = _binomial(rgb.reshape(h, w * 3), 1, step=3).reshape(h, w, 3)
    if params.noise > 0:
        flat = rgb.reshape(h, w * 3)
        flat += _noise16(h, w, float(params.noise))[oy:oy + h, 3 * ox:3 * (ox + w)]
    else:
        rgb += _FIX // 2
    rgb >>= 4  # / _FIX, floor (the +0.5 is folded in above)
    np.clip(rgb, 0, 255, out=rgb)
    return rgb.astype(np.uint8)
