"""Placing the objects of a street; returns drawing closures in three depth layers.

Layers (drawn in this order, each sorted far to near): trees in parks (behind the building line),
walls/fences/hedges on the building line, and street objects. Anything between the camera and the
building line is in front of that line along its viewing ray, so the layers keep occlusion right
even for long planes that the per-object depth sort alone would misorder.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np

from udabench.minicity import objects as ob
from udabench.minicity.canvas import Camera, Canvas
from udabench.minicity.scene import PARK, Layout, Street

Draw = Callable[[Canvas, Camera], None]
Layer = list[tuple[float, Draw]]


def _free(spans: list[tuple[float, float]], z0: float, z1: float, gap: float = 2.0) -> bool:
    return all(z1 + gap <= a or z0 >= b + gap for a, b in spans)


def _walk_x(rng, street: Street, s: int, margin: float = 0.4) -> float:
    """A lateral position on the sidewalk of side s."""
    k = 0 if s < 0 else 1
    inner = street.curb + street.lawn[k] + margin
    return s * rng.uniform(inner, max(inner + 0.01, street.line(s) - margin))


def populate(rng: np.random.Generator, street: Street, lay: Layout) -> tuple[Layer, Layer, Layer]:
    park: Layer = []
    line: Layer = []
    things: Layer = []
    sides = (-1, 1)
    lanes = street.lane_centres()
    occupied: dict[float, list[tuple[float, float]]] = {float(c): [] for c in lanes}
    # a tram first: its rails are part of the ground
    if lay.trains and rng.random() < lay.p_train:
        c = float(rng.choice(lanes))
        street.rail_x = c
        z = rng.uniform(6, 40)
        occupied[c].append((z, z + 36))
        things.append((z, partial(ob.vehicle, rng=rng, X=c, Z=z, kind="train",
                                  oncoming=street.two_way and c < 0)))
    for _ in range(rng.poisson(lay.cars)):
        c = float(rng.choice(lanes))
        u = rng.random()
        kind = "truck" if (lay.trucks and u < lay.p_truck) else (
            "bus" if u < lay.p_truck + lay.p_bus else "car")
        z = rng.uniform(5, 70) if abs(c - street.cam_lane) > 0.1 else rng.uniform(9, 70)
        length = {"car": 5, "truck": 10, "bus": 13}[kind]
        if _free(occupied[c], z, z + length):
            occupied[c].append((z, z + length))
            things.append((z, partial(ob.vehicle, rng=rng, X=c + rng.normal(0, 0.2), Z=z, kind=kind,
                                      oncoming=street.two_way and c < 0)))
    for _ in range(rng.poisson(lay.parked)):
        s = int(rng.choice(sides))
        c = float(lanes[0] if s < 0 else lanes[-1])
        # never block the camera's lane: there, park half on the sidewalk
        narrow = abs(c - street.cam_lane) < 0.1
        spans = occupied.setdefault(float(s) * 1e3, []) if narrow else occupied[c]
        z = rng.uniform(3, 50)
        kind = "truck" if lay.trucks and rng.random() < 0.04 else "car"
        if _free(spans, z, z + 5.0, 0.8):
            spans.append((z, z + 5.0))
            x = s * (street.half + 0.1 if narrow else street.half - rng.uniform(0.95, 1.2))
            things.append((z, partial(ob.vehicle, rng=rng, X=x, Z=z, kind=kind, oncoming=False)))
    for _ in range(rng.poisson(lay.persons)):
        z = 3 + 45 * rng.random() ** 1.5
        if street.cross is not None and rng.random() < 0.25:  # on the zebra crossing
            x, z = rng.uniform(-street.half, street.half), street.cross[0] - rng.uniform(1.5, 3.5)
        else:
            x = _walk_x(rng, street, int(rng.choice(sides)))
        things.append((z, partial(ob.human, rng=rng, X=x, Z=z, code=ob.PERSON)))
    for _ in range(rng.poisson(lay.riders)):
        moto = rng.random() < lay.p_moto
        if street.cross is not None and rng.random() < 0.3:
            x, z, crossing = rng.uniform(-street.half, street.half), street.cross[0] + 2.0, True
        else:
            s = int(rng.choice(sides))
            x, z, crossing = s * (street.half - rng.uniform(0.6, 1.2)), rng.uniform(4, 40), False
        things.append((z, partial(ob.two_wheeler, rng=rng, X=x, Z=z, moto=moto, crossing=crossing,
                                  rider=True)))
    for _ in range(rng.poisson(lay.parked_bikes)):
        s = int(rng.choice(sides))
        x, z = _walk_x(rng, street, s, 0.8), rng.uniform(3, 30)
        things.append((z, partial(ob.two_wheeler, rng=rng, X=x, Z=z, moto=rng.random() < lay.p_moto,
                                  crossing=True, rider=False)))
    for s in sides:
        k = 0 if s < 0 else 1
        near_curb = s * (street.curb + (street.lawn[k] / 2 if street.lawn[k] else 0.35))
        if street.cross is not None and rng.random() < 0.8:  # lights at the junction
            z = street.cross[0] - 1.0
            things.append((z, partial(ob.traffic_light, rng=rng, X=near_curb, Z=z, side=s)))
        for _ in range(rng.poisson(lay.poles)):
            z, u = rng.uniform(3, 60), rng.random()
            fn = (partial(ob.street_lamp, rng=rng, side=s) if u < 0.3 else
                  partial(ob.traffic_sign, rng=rng) if u < 0.6 else
                  partial(ob.traffic_light, rng=rng, side=s) if u < 0.75 else
                  partial(ob.pole, top=rng.uniform(2.5, 5.0)))
            things.append((z, partial(fn, X=near_curb, Z=z)))
        for _ in range(rng.poisson(lay.trees)):
            z = rng.uniform(3, 70)
            things.append((z, partial(ob.tree, rng=rng, X=near_curb, Z=z)))
        for _ in range(rng.poisson(lay.clutter / 2)):
            z = rng.uniform(3, 40)
            things.append((z, partial(ob.clutter, rng=rng, X=_walk_x(rng, street, s, 0.5), Z=z)))
        # park trees beyond the building line
        starts = np.concatenate([[0.0], street.ends[k][:-1]])
        for z0, z1, kind in zip(starts, street.ends[k], street.kinds[k]):
            if kind != PARK or z0 > 120:
                continue
            for _ in range(rng.poisson((z1 - z0) / 6)):
                z = rng.uniform(max(z0, 3), z1)
                x = s * (street.line(s) + rng.uniform(1.5, 14))
                park.append((z, partial(ob.tree, rng=rng, X=x, Z=z)))
        # walls, fences and hedges on the building line
        for kind, p, hgt in (("wall", lay.p_wall, (1.0, 2.8)), ("fence", lay.p_fence, (1.0, 2.0)),
                             ("hedge", lay.p_hedge, (0.8, 1.6))):
            if rng.random() < p:
                z0 = rng.uniform(2, 40)
                line.append((z0, partial(ob.plane, rng=rng, Xp=s * (street.line(s) - 0.05), z0=z0,
                                         z1=z0 + rng.uniform(5, 40), height=rng.uniform(*hgt),
                                         kind=kind)))
    return park, line, things


def draw_layers(cv: Canvas, cam: Camera, *layers: Layer) -> None:
    for layer in layers:
        for _, draw in sorted(layer, key=lambda item: -item[0]):
            draw(cv, cam)
