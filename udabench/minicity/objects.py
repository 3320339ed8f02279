"""Drawers for the objects of a street: boxes (vehicles), people, two-wheelers, poles, lights,
signs, trees and vertical planes (walls, fences, hedges). World units are metres (see Camera).

Every drawer paints far parts first and near parts last; objects are ordered by the caller.
"""
from __future__ import annotations

import numpy as np

from udabench.minicity.canvas import STATIC, VOID, Camera, Canvas
from udabench.minicity.materials import M

ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEG, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)


def _pt(cam: Camera, X: float, Y: float, Z: float) -> tuple[float, float]:
    return cam.x(X, Z), cam.y(Y, Z)


def plane_quad(cam: Camera, Xp: float, z0: float, z1: float, y0: float, y1: float):
    return [_pt(cam, Xp, y0, z0), _pt(cam, Xp, y0, z1), _pt(cam, Xp, y1, z1), _pt(cam, Xp, y1, z0)]


def side_face(cv: Canvas, cam: Camera, Xp: float, z0: float, z1: float, y0: float, y1: float,
              code: int, paint: int) -> None:
    """The part of the vertical plane X = Xp between depths z0..z1 and heights y0..y1."""
    cv.trapezoid(cam.x(Xp, z0), cam.x(Xp, z1), (cam.y(y1, z0), cam.y(y1, z1)),
                 (cam.y(y0, z0), cam.y(y0, z1)), code, paint)


def box(cv: Canvas, cam: Camera, X0, X1, Y0, Y1, Z0, Z1, code: int, mat: int, inst: int,
        front_mat: int | None = None) -> None:
    """Axis-aligned box with its visible faces: side (shaded), top (lit), then the near face."""
    side = cv.new_paint(mat, inst, -0.5)
    if cam.xc < X0:
        side_face(cv, cam, X0, Z0, Z1, Y0, Y1, code, side)
    elif cam.xc > X1:
        side_face(cv, cam, X1, Z0, Z1, Y0, Y1, code, side)
    if cam.hc > Y1:
        top = cv.new_paint(mat, inst, 0.5)
        cv.polygon([_pt(cam, X0, Y1, Z0), _pt(cam, X1, Y1, Z0), _pt(cam, X1, Y1, Z1),
                    _pt(cam, X0, Y1, Z1)], code, top)
    front = cv.new_paint(mat if front_mat is None else front_mat, inst, 0.0)
    cv.rect(cam.x(X0, Z0), cam.y(Y1, Z0), cam.x(X1, Z0), cam.y(Y0, Z0), code, front)


def _side_x(cam: Camera, X0: float, X1: float) -> float | None:
    return X0 if cam.xc < X0 else (X1 if cam.xc > X1 else None)


def _wheel_on_side(cv, cam, Xs, Zw, r, code, inst, hole=0.0):
    cx, cy = _pt(cam, Xs, r, Zw)
    rx = abs(cam.x(Xs, Zw + r) - cam.x(Xs, Zw - r)) / 2
    cv.ellipse(cx, cy, rx, cam.f * r / Zw, code, cv.new_paint(M["tyre"], inst), hole)


def vehicle(cv: Canvas, cam: Camera, rng: np.random.Generator, X: float, Z: float, kind: str,
            oncoming: bool) -> None:
    """car / truck / bus / train seen from behind (or from the front when oncoming)."""
    code = {"car": CAR, "truck": TRUCK, "bus": BUS, "train": TRAIN}[kind]
    inst = cv.new_instance()
    w, L, clear, hb = {
        "car": (rng.uniform(1.7, 1.95), rng.uniform(3.9, 4.8), 0.3, rng.uniform(0.95, 1.1)),
        "truck": (2.5, rng.uniform(7.0, 9.5), 0.5, rng.uniform(3.2, 3.9)),
        "bus": (2.55, rng.uniform(10.5, 13.0), 0.35, rng.uniform(2.9, 3.2)),
        "train": (2.65, rng.uniform(24.0, 36.0), 0.35, rng.uniform(3.2, 3.6)),
    }[kind]
    X0, X1, Z0, Z1 = X - w / 2, X + w / 2, Z, Z + L
    cv.cast_shadow(cam.x(X, (Z0 + Z1) / 2), (cam.y(0, Z0) + cam.y(0, Z1)) / 2,
                   abs(cam.x(X1 + 0.3, Z0) - cam.x(X0 - 0.3, Z0)) / 2,
                   max(abs(cam.y(0, Z0 - 0.4) - cam.y(0, Z1)) / 2, 1.0))
    body = {"car": "car_body", "truck": "truck_cargo", "bus": "bus_body", "train": "train_body"}[kind]
    xs = _side_x(cam, X0, X1)
    if kind == "truck" and oncoming:  # the cab faces us
        box(cv, cam, X0, X1, clear, hb, Z0 + 2.4, Z1, code, M[body], inst)
        box(cv, cam, X0 + 0.05, X1 - 0.05, clear, 2.9, Z0, Z0 + 2.4, code, M["truck_cab"], inst)
    else:
        box(cv, cam, X0, X1, clear, hb, Z0, Z1, code, M[body], inst)
    if xs is not None:
        for zw in (Z0 + 0.8, Z1 - 0.9):
            _wheel_on_side(cv, cam, xs, zw, 0.33 if kind == "car" else 0.5, code, inst)
        if kind in ("bus", "train"):  # window band along the side
            side_face(cv, cam, xs, Z0 + 0.6, Z1 - 0.6, hb * 0.42, hb * 0.8, code,
                      cv.new_paint(M["glass"], inst, -0.5))
    if kind == "car":  # cabin on top of the body
        zc0, zc1 = Z0 + rng.uniform(0.7, 1.1), Z1 - rng.uniform(0.9, 1.4)
        box(cv, cam, X0 + 0.12, X1 - 0.12, hb, hb + rng.uniform(0.4, 0.5), zc0, zc1, code,
            M["glass"], inst)
        if cam.hc > hb + 0.45:
            roof = cv.new_paint(M["car_body"], inst, 0.5)
            y_top = hb + 0.45
            cv.polygon([_pt(cam, X0 + 0.2, y_top, zc0 + 0.1), _pt(cam, X1 - 0.2, y_top, zc0 + 0.1),
                        _pt(cam, X1 - 0.2, y_top, zc1 - 0.1), _pt(cam, X0 + 0.2, y_top, zc1 - 0.1)],
                       code, roof)
    elif kind in ("bus", "train") or oncoming:
        # windscreen of a cab facing us; buses and trams also have rear windows
        cv.rect(cam.x(X0 + 0.2, Z0), cam.y(hb * 0.85, Z0), cam.x(X1 - 0.2, Z0),
                cam.y(hb * 0.45 if kind != "truck" else 1.6, Z0), code, cv.new_paint(M["glass"], inst))
    tyre = cv.new_paint(M["tyre"], inst)
    for a, b in ((X0 + 0.05, X0 + 0.3), (X1 - 0.3, X1 - 0.05)):
        cv.rect(cam.x(a, Z0), cam.y(clear + 0.05, Z0), cam.x(b, Z0), cam.y(0.0, Z0), code, tyre)
    lamp = cv.new_paint(M["head_light" if oncoming else "tail_light"], inst)
    y_l = clear + 0.35
    for a, b in ((X0 + 0.1, X0 + 0.35), (X1 - 0.35, X1 - 0.1)):
        cv.rect(cam.x(a, Z0), cam.y(y_l + 0.15, Z0), cam.x(b, Z0), cam.y(y_l, Z0), code, lamp)


def human(cv: Canvas, cam: Camera, rng: np.random.Generator, X: float, Z: float, code: int,
          hip: float | None = None, feet: float = 0.0, helmet: bool = False) -> None:
    """A frontal figure; hip/feet set for a seated rider (legs end on the pedals)."""
    inst = cv.new_instance()
    s = cam.f / Z
    xg = cam.x(X, Z)
    H = rng.uniform(1.55, 1.95)
    standing = hip is None
    hip = 0.5 * H if standing else hip
    top_of = lambda Y: cam.y(Y, Z)  # noqa: E731 - row of height Y at this depth
    pants, shirt = cv.new_paint(M["pants"], inst), cv.new_paint(M["shirt"], inst)
    skin = cv.new_paint(M["skin"], inst)
    stride = rng.uniform(-0.12, 0.12) if standing else 0.0
    for side in (-1, 1):
        x0 = xg + s * (side * 0.1 - 0.07 + side * stride)
        cv.rect(x0, top_of(hip + 0.05), x0 + 0.14 * s, top_of(feet), code, pants)
    shoulder = hip + 0.33 * H
    cv.rect(xg - 0.22 * s, top_of(shoulder), xg + 0.22 * s, top_of(hip), code, shirt)
    for side in (-1, 1):
        cv.rect(xg + side * 0.21 * s, top_of(shoulder - 0.02), xg + side * 0.3 * s,
                top_of(shoulder - 0.3 * H), code, shirt)
    cv.ellipse(xg, top_of(shoulder + 0.13), 0.1 * s, 0.125 * s, code, skin)
    head = cv.new_paint(M["helmet" if helmet else "hair"], inst)
    cv.ellipse(xg, top_of(shoulder + 0.19), 0.105 * s, 0.07 * s, code, head)


def two_wheeler(cv: Canvas, cam: Camera, rng: np.random.Generator, X: float, Z: float, moto: bool,
                crossing: bool, rider: bool) -> None:
    """Bicycle or motorcycle, side-on when crossing, else seen from behind; optional rider."""
    code = MOTORCYCLE if moto else BICYCLE
    inst = cv.new_instance()
    s = cam.f / Z
    frame = cv.new_paint(M["moto_body" if moto else "bike_frame"], inst)
    tyre = cv.new_paint(M["tyre"], inst)
    P = lambda dx, Y: (cam.x(X + dx, Z), cam.y(Y, Z))  # noqa: E731
    if crossing:
        r = 0.32 if moto else 0.34
        for dx in (-0.6, 0.6):
            cv.ellipse(*P(dx, r), r * s, r * s, code, tyre, 0.0 if moto else 0.8)
        if moto:
            cv.polygon([P(-0.55, 0.45), P(0.5, 0.45), P(0.45, 0.95), P(-0.45, 0.9)], code, frame)
            cv.line(*P(0.45, 0.9), *P(0.35, 1.15), 0.05 * s, code, frame)
        else:
            t = 0.045 * s
            for a, b in (((-0.6, 0.34), (-0.1, 0.88)), ((-0.1, 0.88), (0.42, 0.92)),
                         ((0.42, 0.92), (0.6, 0.34)), ((-0.6, 0.34), (0.0, 0.34)),
                         ((0.0, 0.34), (0.42, 0.92)), ((0.42, 0.92), (0.38, 1.08))):
                cv.line(*P(*a), *P(*b), t, code, frame)
    else:
        cv.rect(*P(-0.04, 0.7), *P(0.04, 0.0), code, tyre)
        if moto:
            cv.rect(*P(-0.3, 1.0), *P(0.3, 0.35), code, frame)
        cv.line(*P(-0.3, 1.05), *P(0.3, 1.05), 0.05 * s, code, frame)
        cv.line(*P(0.0, 1.05), *P(0.0, 0.5), 0.05 * s, code, frame)
    if rider:
        human(cv, cam, rng, X - (0.1 if crossing else 0.0), Z - 0.05, RIDER,
              hip=0.95 if not moto else 0.85, feet=0.3, helmet=moto or rng.random() < 0.4)


def pole(cv: Canvas, cam: Camera, X: float, Z: float, top: float, width: float = 0.15) -> None:
    cv.rect(cam.x(X - width / 2, Z), cam.y(top, Z), cam.x(X + width / 2, Z), cam.y(0.0, Z), POLE,
            cv.new_paint(M["pole"], cv.new_instance()))


def street_lamp(cv: Canvas, cam: Camera, rng, X: float, Z: float, side: int) -> None:
    top = rng.uniform(6.0, 8.5)
    pole(cv, cam, X, Z, top)
    paint = cv.new_paint(M["pole"], 0)
    arm = X - side * rng.uniform(1.0, 2.5)
    cv.line(cam.x(X, Z), cam.y(top, Z), cam.x(arm, Z), cam.y(top, Z), 0.12 * cam.f / Z, POLE, paint)
    cv.rect(cam.x(arm - 0.35, Z), cam.y(top, Z), cam.x(arm + 0.35, Z), cam.y(top - 0.2, Z), POLE, paint)


def traffic_light(cv: Canvas, cam: Camera, rng, X: float, Z: float, side: int) -> None:
    inst = cv.new_instance()
    over = rng.random() < 0.4
    top = rng.uniform(5.5, 6.5) if over else rng.uniform(3.0, 4.2)
    pole(cv, cam, X, Z, top)
    bx = X
    if over:  # hanging from an arm over the road
        bx = X - side * rng.uniform(3.0, 6.0)
        cv.line(cam.x(X, Z), cam.y(top, Z), cam.x(bx, Z), cam.y(top, Z), 0.12 * cam.f / Z, POLE,
                cv.new_paint(M["pole"], 0))
    y1 = top - (0.05 if over else 0.0)
    y0 = y1 - 0.95
    cv.rect(cam.x(bx - 0.18, Z), cam.y(y1, Z), cam.x(bx + 0.18, Z), cam.y(y0, Z), LIGHT,
            cv.new_paint(M["light_box"], inst))
    if rng.random() < 0.7:  # facing us: three lamps, one lit
        lit = int(rng.integers(3))
        for k, name in enumerate(("lamp_red", "lamp_amber", "lamp_green")):
            paint = cv.new_paint(M[name if k == lit else "lamp_off"], inst)
            cy = cam.y(y1 - 0.17 - 0.3 * k, Z)
            r = 0.1 * cam.f / Z
            cv.ellipse(cam.x(bx, Z), cy, r, r, LIGHT, paint)


def traffic_sign(cv: Canvas, cam: Camera, rng, X: float, Z: float) -> None:
    inst = cv.new_instance()
    top = rng.uniform(2.2, 2.9)
    pole(cv, cam, X, Z, top + 0.3, 0.08)
    s = cam.f / Z
    size = rng.uniform(0.55, 0.8)
    cx, cy = cam.x(X, Z), cam.y(top, Z)
    r = size / 2 * s
    shape = int(rng.integers(5)) if rng.random() > 0.2 else 5  # 5 = back of a sign
    P = lambda name: cv.new_paint(M[name], inst)  # noqa: E731
    if shape == 0:  # prohibition: red ring, white centre
        cv.ellipse(cx, cy, r, r, SIGN, P("sign_red"))
        cv.ellipse(cx, cy, 0.72 * r, 0.72 * r, SIGN, P("sign_white"))
    elif shape == 1:  # mandatory: blue disc
        cv.ellipse(cx, cy, r, r, SIGN, P("sign_blue"))
    elif shape == 2:  # warning triangle
        cv.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], SIGN, P("sign_red"))
        cv.polygon([(cx, cy - 0.5 * r), (cx + 0.55 * r, cy + 0.5 * r), (cx - 0.55 * r, cy + 0.5 * r)],
                   SIGN, P("sign_white"))
    elif shape == 3:  # information panel
        cv.rect(cx - r, cy - 0.8 * r, cx + r, cy + 0.8 * r, SIGN, P("sign_blue"))
        cv.rect(cx - 0.5 * r, cy - 0.4 * r, cx + 0.5 * r, cy + 0.4 * r, SIGN, P("sign_white"))
    elif shape == 4:  # priority diamond
        cv.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], SIGN, P("sign_yellow"))
    else:
        cv.ellipse(cx, cy, r, r, SIGN, P("sign_back"))


def tree(cv: Canvas, cam: Camera, rng, X: float, Z: float) -> None:
    inst = cv.new_instance()
    trunk_h = rng.uniform(1.8, 3.2)
    tw = rng.uniform(0.25, 0.4)
    cv.rect(cam.x(X - tw / 2, Z), cam.y(trunk_h + 0.5, Z), cam.x(X + tw / 2, Z), cam.y(0.0, Z), VEG,
            cv.new_paint(M["trunk"], inst))
    R = rng.uniform(1.3, 3.0)
    leaves = cv.new_paint(M["leaves"], inst)
    s = cam.f / Z
    crown = []
    for _ in range(int(rng.integers(3, 6))):
        dx, dy = rng.normal(0, 0.45 * R), rng.normal(0, 0.3 * R)
        rr = R * rng.uniform(0.55, 0.85)
        crown.append((cam.x(X + dx, Z), cam.y(trunk_h + R + dy, Z), rr * s, rr * s * 0.9))
    cv.blobs(crown, VEG, leaves)


def plane(cv: Canvas, cam: Camera, rng, Xp: float, z0: float, z1: float, height: float,
          kind: str) -> None:
    """Wall, hedge or fence along the street (constant X) from z0 to z1."""
    z0 = max(z0, 1.0)
    if z1 <= z0 or abs(Xp - cam.xc) < 0.3:
        return
    inst = cv.new_instance()
    quad = plane_quad(cam, Xp, z0, z1, 0.0, height)
    if kind == "wall":
        side_face(cv, cam, Xp, z0, z1, 0.0, height, WALL, cv.new_paint(M["wall"], inst, -0.2))
    elif kind == "hedge":
        side_face(cv, cam, Xp, z0, z1, 0.0, height, VEG, cv.new_paint(M["hedge"], inst, -0.2))
    else:  # railing: posts and rails, see-through between them
        p = np.asarray(quad)
        g = cv.grid(p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max())
        if g is None:
            return
        ys, xs, gx, gy = g
        with np.errstate(divide="ignore", invalid="ignore"):
            zc = cam.f * (Xp - cam.xc) / (gx - cam.xv)  # depth of each column on the plane
            yw = cam.hc - (gy - cam.yh) * zc / cam.f  # height of each pixel on the plane
            spacing = rng.uniform(0.25, 1.2)
            mask = (zc >= z0) & (zc <= z1) & (yw >= 0) & (yw <= height)
            posts = zc * (1 / spacing)
            posts -= np.floor(posts)
            bars = (posts < 0.3) | (yw > height - 0.12) | (np.abs(yw - 0.5 * height) < 0.05)
        cv.put(ys, xs, mask & bars, FENCE, cv.new_paint(M["fence"], inst, -0.2))


def clutter(cv: Canvas, cam: Camera, rng, X: float, Z: float) -> None:
    """Things outside the 19 classes: bins/bollards (static) and kiosks (unlabeled)."""
    inst = cv.new_instance()
    u = rng.random()
    if u < 0.35:
        box(cv, cam, X - 0.3, X + 0.3, 0.0, 1.0, Z, Z + 0.6, STATIC, M["bin"], inst)
    elif u < 0.65:
        cv.rect(cam.x(X - 0.07, Z), cam.y(0.9, Z), cam.x(X + 0.07, Z), cam.y(0.0, Z), STATIC,
                cv.new_paint(M["bin"], inst))
    else:
        w = rng.uniform(1.2, 2.2)
        box(cv, cam, X - w / 2, X + w / 2, 0.0, rng.uniform(2.2, 3.0), Z, Z + 1.5, VOID, M["kiosk"],
            inst)
