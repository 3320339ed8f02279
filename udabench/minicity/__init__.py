"""MiniCity: a seeded, deterministic procedural street-scene benchmark (docs/protocol.md, "The procedural
benchmark"). Scenes follow the Cityscapes class layout in a flat "game" style (sources, like GTA5 and
SYNTHIA) and a textured, noisy, differently lit "real" style (target, like Cityscapes), and are
written in the real on-disk formats so the real loaders run on them.

    paths = ensure_minicity(Path("data"))          # generates once, reused afterwards
    rgb, train_ids = render_scene(0, 256, 512, "game", "gta5", MiniCityParams())
"""
from udabench.minicity.formats import write_cityscapes, write_gta5, write_synthia
from udabench.minicity.generate import MiniCityPaths, ensure_minicity
from udabench.minicity.params import GENERATOR_VERSION, MiniCityParams
from udabench.minicity.render import DOMAINS, VARIANTS, render_scene

__all__ = [
    "DOMAINS", "GENERATOR_VERSION", "VARIANTS", "MiniCityParams", "MiniCityPaths", "ensure_minicity",
    "render_scene", "write_cityscapes", "write_gta5", "write_synthia",
]
