"""Materials: what a surface looks like in each domain.

The scene paints every region with a material (finer than a class: a car has body, glass, tyres and
lights); the style turns materials into colours. The real-domain base colour is a plausible,
class-consistent change of the game one (cars lose their toy blue, foliage gets darker and olive,
the sky hazier), never an arbitrary per-class remap: the feasibility prototype showed a random remap
makes adaptation impossible. Detail materials (paving joints, road patches, floor bands) share the
game colour of their surface, so they only become visible in the real style, as texture.
"""
from __future__ import annotations

import numpy as np

# name: (game RGB, real RGB, fine texture, coarse texture, real per-instance spread)
# texture amplitudes are relative luminance modulations; spread is a relative std per instance.
_TABLE: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], float, float, float]] = {
    "sky": ((100, 170, 245), (178, 196, 214), 0.00, 0.12, 0.08),
    "road": ((90, 90, 100), (88, 86, 84), 0.12, 0.06, 0.10),
    "lane": ((240, 240, 240), (200, 198, 185), 0.08, 0.05, 0.05),
    "road_patch": ((90, 90, 100), (64, 64, 66), 0.10, 0.05, 0.10),
    "curb": ((190, 190, 190), (150, 148, 140), 0.08, 0.05, 0.05),
    "sidewalk": ((200, 180, 170), (142, 138, 132), 0.08, 0.06, 0.12),
    "joint": ((200, 180, 170), (100, 98, 95), 0.05, 0.03, 0.05),
    "building": ((190, 140, 100), (150, 134, 120), 0.08, 0.06, 0.25),
    "window": ((60, 110, 170), (52, 58, 68), 0.03, 0.08, 0.20),
    "band": ((190, 140, 100), (118, 106, 96), 0.06, 0.05, 0.20),
    "wall": ((200, 195, 175), (165, 160, 150), 0.10, 0.06, 0.12),
    "fence": ((150, 100, 50), (105, 105, 100), 0.05, 0.05, 0.20),
    "pole": ((130, 130, 140), (100, 100, 100), 0.04, 0.04, 0.15),
    "light_box": ((50, 50, 50), (36, 38, 36), 0.03, 0.00, 0.10),
    "lamp_red": ((250, 40, 30), (220, 72, 60), 0.00, 0.00, 0.00),
    "lamp_amber": ((250, 180, 20), (222, 170, 80), 0.00, 0.00, 0.00),
    "lamp_green": ((40, 230, 90), (92, 210, 150), 0.00, 0.00, 0.00),
    "lamp_off": ((70, 70, 60), (46, 46, 46), 0.00, 0.00, 0.00),
    "sign_blue": ((30, 90, 220), (42, 76, 150), 0.03, 0.05, 0.10),
    "sign_red": ((230, 30, 30), (175, 46, 46), 0.03, 0.05, 0.10),
    "sign_white": ((245, 245, 245), (205, 205, 200), 0.03, 0.05, 0.05),
    "sign_yellow": ((250, 210, 0), (215, 186, 62), 0.03, 0.05, 0.10),
    "sign_back": ((160, 160, 160), (120, 120, 118), 0.03, 0.05, 0.10),
    "leaves": ((60, 180, 50), (72, 100, 45), 0.25, 0.15, 0.15),
    "trunk": ((120, 80, 40), (80, 68, 55), 0.15, 0.05, 0.15),
    "hedge": ((40, 160, 70), (60, 90, 45), 0.25, 0.10, 0.12),
    "grass": ((140, 210, 80), (115, 135, 75), 0.18, 0.15, 0.12),
    "skin": ((235, 185, 145), (200, 160, 135), 0.03, 0.00, 0.15),
    "hair": ((70, 45, 25), (45, 38, 32), 0.05, 0.00, 0.30),
    "shirt": ((220, 60, 60), (96, 96, 110), 0.05, 0.03, 0.45),
    "pants": ((50, 60, 150), (60, 62, 72), 0.05, 0.03, 0.35),
    "helmet": ((250, 230, 40), (70, 70, 75), 0.03, 0.00, 0.40),
    "car_body": ((40, 90, 210), (125, 125, 130), 0.03, 0.05, 0.55),
    "glass": ((50, 60, 80), (40, 45, 55), 0.03, 0.08, 0.15),
    "tyre": ((25, 25, 25), (28, 28, 30), 0.03, 0.00, 0.05),
    "tail_light": ((220, 30, 30), (170, 40, 40), 0.00, 0.00, 0.05),
    "head_light": ((240, 240, 210), (200, 200, 190), 0.00, 0.00, 0.05),
    "truck_cab": ((240, 240, 240), (185, 185, 180), 0.03, 0.05, 0.30),
    "truck_cargo": ((210, 130, 40), (150, 140, 125), 0.05, 0.05, 0.35),
    "bus_body": ((250, 200, 30), (190, 175, 110), 0.03, 0.05, 0.30),
    "train_body": ((230, 230, 245), (170, 172, 180), 0.03, 0.05, 0.15),
    "bike_frame": ((210, 40, 160), (70, 70, 80), 0.03, 0.00, 0.50),
    "moto_body": ((30, 200, 200), (60, 60, 70), 0.03, 0.08, 0.50),
    "bin": ((70, 130, 70), (70, 78, 70), 0.05, 0.05, 0.20),
    "kiosk": ((160, 60, 160), (120, 100, 110), 0.05, 0.08, 0.20),
    "hood": ((40, 40, 48), (30, 32, 36), 0.02, 0.10, 0.10),
    "rail": ((110, 100, 90), (90, 85, 80), 0.10, 0.05, 0.05),
}

NAMES: tuple[str, ...] = tuple(_TABLE)
M: dict[str, int] = {name: i for i, name in enumerate(NAMES)}
GAME_RGB = np.array([v[0] for v in _TABLE.values()], dtype=np.float32)
REAL_RGB = np.array([v[1] for v in _TABLE.values()], dtype=np.float32)
TEXTURE = np.array([(v[2], v[3]) for v in _TABLE.values()], dtype=np.float32)  # (fine, coarse)
REAL_SPREAD = np.array([v[4] for v in _TABLE.values()], dtype=np.float32)
# Detail materials vary with their surface (same per-instance jitter), so they stay invisible in
# the game style, where their base colour equals the surface's.
_PARENT = {"road_patch": "road", "joint": "sidewalk", "band": "building"}
JITTER_OF = np.array([M[_PARENT.get(n, n)] for n in NAMES], dtype=np.intp)
# Self-luminous lamps keep their colour: no per-instance jitter, no shading.
EMISSIVE = np.array([n.startswith("lamp_") or n.endswith("_light") for n in NAMES])
