"""The shipped MiniCity-pretrained backbone weights (MiniCity's stand-in for ImageNet weights).

``weights/<backbone>.safetensors`` holds the backbone body's state dict (the layout of a
``model.init`` weights file: ``conv1.weight``, ``layer1.0.bn1.running_mean``, ... for resnet-tiny;
``stages.0.patch_embed.proj.weight``, ... for mit-tiny) and ``weights/<backbone>.json`` its
sidecar: sha256, the command that rebuilt it, the generator key, the training settings and the
accuracies. docs/minicity_pretraining.md describes how they are made.

    path = weights_path("resnet-tiny")     # checked against the sidecar's sha256
    build_segmenter(SegmenterConfig(backbone="resnet-tiny", init=str(path)), 19)
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from udabench.errors import UserError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SUFFIX = ".safetensors"
SIDECAR_FORMAT = 1
SCRIPT = "bench/pretrain_minicity.py"


def rebuild_command(backbone: str) -> str:
    return f"python {SCRIPT} --backbone {backbone} --out udabench/minicity/weights/"


def available(folder: Path | None = None) -> tuple[str, ...]:
    """Backbones with a shipped weights sidecar, sorted."""
    folder = WEIGHTS_DIR if folder is None else folder
    return tuple(sorted(p.stem for p in folder.glob("*.json")))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar(backbone: str, folder: Path | None = None) -> dict:
    """The sidecar of a backbone's weights (provenance to record with a run)."""
    folder = WEIGHTS_DIR if folder is None else folder
    names = available(folder)
    if backbone not in names:
        raise UserError(f"no MiniCity-pretrained weights for backbone '{backbone}' (shipped: "
                        f"{', '.join(names) or 'none'}); build them with `{rebuild_command(backbone)}` "
                        f"or start from random weights with --set model.init=none")
    path = folder / f"{backbone}.json"
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
            raise ValueError("unknown sidecar format")
        for key in ("sha256", "file", "command"):
            if not isinstance(meta.get(key), str):
                raise ValueError(f"no '{key}'")
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable sidecar ({exc}); rebuild the weights with "
                        f"`{rebuild_command(backbone)}`") from None
    return meta


def weights_path(backbone: str, folder: Path | None = None) -> Path:
    """Path of the shipped weights of ``backbone``, after checking its sha256 against the sidecar."""
    folder = WEIGHTS_DIR if folder is None else folder
    meta = sidecar(backbone, folder)
    path = folder / meta["file"]
    if path.name != meta["file"] or path.suffix != SUFFIX:  # no path tricks in a sidecar
        raise UserError(f"{folder / (backbone + '.json')}: 'file' must name a {SUFFIX} file in "
                        f"{folder}; rebuild the weights with `{rebuild_command(backbone)}`")
    if not path.is_file():
        raise UserError(f"MiniCity-pretrained weights {path} are missing; rebuild them with "
                        f"`{rebuild_command(backbone)}`")
    actual = sha256_of(path)
    if actual != meta["sha256"]:
        raise UserError(f"MiniCity-pretrained weights {path} do not match their sidecar (sha256 "
                        f"{actual[:12]}..., expected {meta['sha256'][:12]}...); rebuild them with "
                        f"`{rebuild_command(backbone)}`")
    return path
