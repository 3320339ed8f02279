"""Label-and-paint canvas, pinhole camera and vectorised raster primitives.

Drawing is the painter's algorithm: every primitive overwrites the label code and the paint id of
the pixels it covers, so callers draw far to near. A *paint* is (material, instance, shade,
shadowed); the style turns each paint into one colour, so an image is a gather from a small table.
Primitives rasterise inside their bounding box with broadcast coordinate vectors (no per-pixel
Python loops), sample at pixel centres and keep at least one pixel for thin parts (poles, wheels at
tiny sizes), so tiny test images still contain every class that was drawn.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Label codes: 0..18 are trainIds; the rest are real labels outside the 19 classes, written as the
# matching labelId / SYNTHIA id by formats.py (so every loader's mapping to 255 is exercised).
LANE, EGO, STATIC, VOID, RAIL = 19, 20, 21, 22, 23
N_CODES = 24
THINGS = frozenset(range(11, 19))  # person .. bicycle: carry a SYNTHIA instance id
GROUND = frozenset((0, 1, 9, LANE, RAIL))  # codes that receive cast shadows
_IS_GROUND = np.zeros(256, dtype=bool)
_IS_GROUND[list(GROUND)] = True


@dataclass(frozen=True)
class Camera:
    """Pinhole camera looking along +Z, X right, Y up, ground at Y = 0, no roll or pitch."""

    f: float  # focal length in pixels
    xv: float  # column of the vanishing point
    yh: float  # row of the horizon
    hc: float  # camera height above the ground, metres
    xc: float  # camera lateral position, metres

    def x(self, X, Z):
        return self.xv + self.f * (X - self.xc) / Z

    def y(self, Y, Z):
        return self.yh + self.f * (self.hc - Y) / Z


def _span(a0: float, a1: float, n: int) -> tuple[int, int]:
    """Pixel indices whose centres lie in [a0, a1); one pixel at least for a thin extent."""
    i0, i1 = int(np.ceil(a0 - 0.5)), int(np.ceil(a1 - 0.5))
    if i1 <= i0:
        i0 = int(np.floor((a0 + a1) / 2))
        i1 = i0 + 1
    return max(i0, 0), min(i1, n)


class Canvas:
    def __init__(self, height: int, width: int):
        self.h, self.w = height, width
        self.code = np.full((height, width), VOID, dtype=np.uint8)
        self.paint = np.zeros((height, width), dtype=np.uint16)
        self.paints: list[tuple[int, int, float, bool]] = [(0, 0, 0.0, False)]
        self._paint_ids: dict[tuple[int, int, float, bool], int] = {self.paints[0]: 0}
        self.n_instances = 0

    # -- registries --
    def new_instance(self) -> int:
        self.n_instances += 1
        return self.n_instances

    def new_paint(self, mat: int, inst: int = 0, shade: float = 0.0, shadowed: bool = False) -> int:
        """Paint id for a material on an instance; shade in [-1, 1] (side faces < 0 < tops)."""
        key = (mat, inst, float(shade), shadowed)
        pid = self._paint_ids.get(key)
        if pid is None:
            pid = len(self.paints)
            if pid > 65535:
                raise RuntimeError("MiniCity scene uses more than 65535 paints")
            self.paints.append(key)
            self._paint_ids[key] = pid
        return pid

    # -- writing --
    def put(self, ys: slice, xs: slice, mask, code, paint) -> None:
        """Write code/paint (scalars or region-shaped arrays) where mask (None = everywhere).

        Masked writes are done as wrap-around integer blends (region += m * (new - region)),
        several times faster in numpy than boolean-index assignment.
        """
        if mask is None:
            self.code[ys, xs] = code
            self.paint[ys, xs] = paint
            return
        m = mask.view(np.uint8)
        region_code, region_paint = self.code[ys, xs], self.paint[ys, xs]
        region_code += m * (np.asarray(code, dtype=np.uint8) - region_code)
        region_paint += m * (np.asarray(paint, dtype=np.uint16) - region_paint)

    def grid(self, x0: float, y0: float, x1: float, y1: float):
        c0, c1 = _span(x0, x1, self.w)
        r0, r1 = _span(y0, y1, self.h)
        if c1 <= c0 or r1 <= r0:
            return None
        xs = np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5
        ys = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
        return slice(r0, r1), slice(c0, c1), xs, ys

    def rect(self, x0: float, y0: float, x1: float, y1: float, code: int, paint: int) -> None:
        c0, c1 = _span(min(x0, x1), max(x0, x1), self.w)
        r0, r1 = _span(min(y0, y1), max(y0, y1), self.h)
        if c1 > c0 and r1 > r0:
            self.code[r0:r1, c0:c1] = code
            self.paint[r0:r1, c0:c1] = paint

    def ellipse(self, cx, cy, rx, ry, code: int, paint: int, hole: float = 0.0) -> None:
        """Filled ellipse; hole in (0, 1) leaves the inner part (a wheel rim) untouched."""
        rx, ry = max(rx, 0.71), max(ry, 0.71)  # 0.71 px keeps the nearest pixel centre inside
        g = self.grid(cx - rx, cy - ry, cx + rx, cy + ry)
        if g is None:
            return
        ys, xs, gx, gy = g
        d = ((gy - cy) * (1 / ry)) ** 2 + ((gx - cx) * (1 / rx)) ** 2  # one broadcast add
        mask = d <= 1.0
        if hole > 0:
            # keep the ring at least ~1 px thick so small wheels stay visible
            inner = min(hole, max(0.0, 1.0 - 1.2 / min(rx, ry)))
            mask &= d > inner * inner
        self.put(ys, xs, mask, code, paint)

    def blobs(self, ellipses, code: int, paint: int) -> None:
        """Union of ellipses (cx, cy, rx, ry) in one write: a tree crown."""
        e = np.array(ellipses, dtype=np.float64)
        e[:, 2:] = np.maximum(e[:, 2:], 0.71)
        g = self.grid((e[:, 0] - e[:, 2]).min(), (e[:, 1] - e[:, 3]).min(),
                      (e[:, 0] + e[:, 2]).max(), (e[:, 1] + e[:, 3]).max())
        if g is None:
            return
        ys, xs, gx, gy = g
        mask = np.zeros((gy.shape[0], gx.shape[1]), dtype=bool)
        for cx, cy, rx, ry in e:  # each ellipse only inside its own box
            c0, c1 = _span(cx - rx, cx + rx, self.w)
            r0, r1 = _span(cy - ry, cy + ry, self.h)
            if c1 <= c0 or r1 <= r0:
                continue
            ey = gy[r0 - ys.start:r1 - ys.start]
            ex = gx[:, c0 - xs.start:c1 - xs.start]
            mask[r0 - ys.start:r1 - ys.start, c0 - xs.start:c1 - xs.start] |= (
                ((ey - cy) * (1 / ry)) ** 2 + ((ex - cx) * (1 / rx)) ** 2 <= 1.0)
        self.put(ys, xs, mask, code, paint)

    def trapezoid(self, x0: float, x1: float, top: tuple[float, float], bottom: tuple[float, float],
                  code: int, paint: int) -> None:
        """Columns x0..x1 filled between two lines (rows at x0 and at x1): a vertical plane seen in
        perspective (box side, wall). Cheaper than a general polygon: 2 comparisons per pixel."""
        if x1 < x0:
            x0, x1, top, bottom = x1, x0, top[::-1], bottom[::-1]
        g = self.grid(x0, min(top), x1, max(bottom))
        if g is None:
            return
        ys, xs, gx, gy = g
        t = (gx - x0) * (1 / max(x1 - x0, 1e-6))
        t = np.clip(t, 0.0, 1.0)
        mask = (gy >= top[0] + (top[1] - top[0]) * t) & (gy < bottom[0] + (bottom[1] - bottom[0]) * t)
        self.put(ys, xs, mask, code, paint)

    def polygon(self, pts, code: int, paint: int) -> None:
        """Convex polygon given as a sequence of (x, y) in either winding order."""
        p = np.asarray(pts, dtype=np.float64)
        g = self.grid(p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max())
        if g is None:
            return
        ys, xs, gx, gy = g
        q = np.roll(p, -1, axis=0)
        area = np.sum(p[:, 0] * q[:, 1] - q[:, 0] * p[:, 1])
        sign = 1.0 if area >= 0 else -1.0
        mask = None
        for (px, py), (qx, qy) in zip(p, q):
            ex, ey = qx - px, qy - py
            if ex == 0 and ey == 0:
                continue
            # inside: sign * (ex * (y - py) - ey * (x - px)) >= 0, as one broadcast comparison
            inside = (sign * ex) * (gy - py) >= (sign * ey) * (gx - px)
            mask = inside if mask is None else mask & inside
        if mask is not None:
            self.put(ys, xs, mask, code, paint)

    def line(self, x0, y0, x1, y1, width: float, code: int, paint: int) -> None:
        """Thick segment (bicycle frames, arms); at least one pixel wide."""
        dx, dy = x1 - x0, y1 - y0
        n = max(np.hypot(dx, dy), 1e-6)
        hw = max(width, 1.0) / 2
        ox, oy = -dy / n * hw, dx / n * hw
        self.polygon([(x0 + ox, y0 + oy), (x1 + ox, y1 + oy), (x1 - ox, y1 - oy), (x0 - ox, y0 - oy)],
                     code, paint)

    def cast_shadow(self, cx, cy, rx, ry) -> None:
        """Darken the ground paints inside an ellipse (a vehicle's contact shadow)."""
        g = self.grid(cx - rx, cy - ry, cx + rx, cy + ry)
        if g is None:
            return
        ys, xs, gx, gy = g
        mask = ((gx - cx) / rx) ** 2 + ((gy - cy) / ry) ** 2 <= 1.0
        mask &= np.take(_IS_GROUND, self.code[ys, xs])
        region = self.paint[ys, xs]
        old = np.unique(region[mask])
        if old.size == 0:
            return
        new = np.array([self.new_paint(*self.paints[int(o)][:3], shadowed=True) for o in old],
                       dtype=np.uint16)
        region[mask] = new[np.searchsorted(old, region[mask])]
