"""Reading initialisation files and mapping their keys onto the segmenter.

Layouts understood:
- timm / torchvision ResNet: ``conv1.weight``, ``bn1.*``, ``layerN.B.{conv,bn}K.*``,
  ``layerN.0.downsample.{0,1}.*`` (the two libraries share these names); ``fc.*`` is ignored.
  Wrapper prefixes (``module.``, ``_orig_mod.``, ``model.``) are stripped; a whole segmentation
  model (keys under ``backbone.``, e.g. mmseg) contributes only its backbone.
- Classic DeepLabV2 (Caffe-converted, as used by AdaptSegNet/ADVENT/CBST): the same ResNet names
  under ``Scale.`` plus classifiers ``layer5`` / ``layer6``:
      Scale.conv1.weight                       -> backbone conv1.weight
      Scale.layer2.0.conv1.weight              -> backbone layer2.0.conv1.weight (strided 1x1, see
                                                  backbones.apply_caffe_geometry)
      Scale.layer5.conv2d_list.{i}.{weight,bias} -> head.convs.{i} if it reads layer4 (2048 ch),
                                                  aux_head.convs.{i} if it reads layer3 (1024 ch)
  A classifier whose class count differs from the segmenter's (e.g. the COCO head of the init file)
  is not loaded: the head keeps its N(0, 0.01) init, as in the classic training code.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from udabench.errors import UserError

WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "Scale.")
STATE_DICT_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "net")
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
CAFFE_CLASSIFIER = re.compile(r"^(layer[56])\.conv2d_list\.(\d+)\.(weight|bias)$")


def file_sha256(path: Path) -> str:
    """sha256 of a weights file, recorded with a run that was initialised from it."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _first(items: list[str], n: int = 3) -> str:
    more = f", ... ({len(items)} in all)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def read_state_dict(path: Path, where: str = "model.init") -> dict[str, torch.Tensor]:
    """Load a flat name -> tensor dict from .pth/.pt/.bin (weights_only) or .safetensors."""
    if not path.is_file():
        raise UserError(f"{where}: weights file '{path}' does not exist")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise UserError(f"{where}: '{path}' needs the safetensors package (pip install "
                            f"safetensors), or save the weights as .pth") from exc
        try:
            obj = load_file(str(path), device="cpu")
        except Exception as exc:
            raise UserError(f"{where}: '{path}' is not a readable safetensors file "
                            f"({type(exc).__name__})") from exc
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickles with code, truncated files, non-torch files
            reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            raise UserError(f"{where}: could not read '{path}' as a weights-only PyTorch file "
                            f"({type(exc).__name__}: {reason})") from exc
    # Training checkpoints wrap the state dict: {"state_dict": {...}, "epoch": ...}.
    while isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in STATE_DICT_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise UserError(f"{where}: '{path}' holds no state dict of tensors (top-level keys: "
                            f"{_first(sorted(map(str, obj)), 6)})")
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise UserError(f"{where}: '{path}' holds no state dict of tensors")
    return dict(obj)


def strip_wrappers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip prefixes every key shares (DataParallel ``module.``, compile, Caffe ``Scale.``)."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                changed = True
    return sd


def backbone_keys(sd: dict[str, torch.Tensor], notes: list[str]) -> dict[str, torch.Tensor]:
    """The ResNet part of ``sd``: ``backbone.*`` of a whole model, else everything but ``fc.*``."""
    sd = strip_wrappers(sd)
    if any(k.startswith("backbone.") for k in sd):
        rest = [k for k in sd if not k.startswith("backbone.")]
        if rest:
            notes.append(f"ignored {len(rest)} non-backbone keys ({_first(rest)})")
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
        sd = strip_wrappers(sd)
    fc = [k for k in sd if k.startswith("fc.")]
    if fc:
        notes.append(f"ignored the ImageNet classifier ({', '.join(fc)})")
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def load_strict(module: nn.Module, sd: dict[str, torch.Tensor], what: str, source: str) -> None:
    """Load ``sd`` into ``module`` or raise a UserError naming missing/unexpected/mismatched keys.

    ``num_batches_tracked`` may be absent (older and Caffe-converted files lack it).
    """
    target = module.state_dict()
    missing = [k for k in target if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in target]
    mismatched = [
        f"{k}: file {list(sd[k].shape)} vs model {list(target[k].shape)}"
        for k in target if k in sd and sd[k].shape != target[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({_first(mismatched, 2)})")
    if problems:
        raise UserError(f"{source}: not a {what} checkpoint: {'; '.join(problems)}")
    module.load_state_dict(sd, strict=False)


def split_caffe(
    sd: dict[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], dict[str, dict[int, dict[str, torch.Tensor]]]]:
    """Split a classic DeepLabV2 state dict into ResNet keys and classifiers by layer and branch."""
    sd = strip_wrappers(sd)
    resnet: dict[str, torch.Tensor] = {}
    classifiers: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for key, value in sd.items():
        match = CAFFE_CLASSIFIER.match(key)
        if match:
            layer, branch, kind = match.group(1), int(match.group(2)), match.group(3)
            classifiers.setdefault(layer, {}).setdefault(branch, {})[kind] = value
        elif key.startswith(("layer5.", "layer6.")):
            raise UserError(f"{source}: unexpected classifier key '{key}'; expected "
                            f"layer5/layer6.conv2d_list.<i>.weight|bias")
        else:
            resnet[key] = value
    return resnet, classifiers


def caffe_head_state(
    classifiers: dict[str, dict[int, dict[str, torch.Tensor]]],
    heads: dict[int, tuple[str, nn.Module]],
    num_classes: int,
    notes: list[str],
) -> dict[str, torch.Tensor]:
    """Map Caffe classifiers to segmenter keys; ``heads`` maps input channels -> (prefix, head).

    The classifier's input width tells which feature level it reads (layer5 is the main head of a
    single-level model but the layer3 head of AdaptSegNet's multi-level one).
    """
    out: dict[str, torch.Tensor] = {}
    for layer, branches in sorted(classifiers.items()):
        weight = branches[min(branches)]["weight"]
        classes, in_ch = int(weight.shape[0]), int(weight.shape[1])
        if in_ch not in heads:
            notes.append(f"{layer} ({in_ch}-channel input) not loaded: no head reads that level")
            continue
        prefix, head = heads[in_ch]
        if classes != num_classes:
            notes.append(f"{layer} ({classes} classes) not loaded: {prefix} keeps its N(0, 0.01) "
                         f"init for {num_classes} classes")
            continue
        used = [b for b in sorted(branches) if b < len(head.convs)]
        unused = [b for b in sorted(branches) if b >= len(head.convs)]
        if unused:
            notes.append(f"{layer} branches {unused} not loaded: the model uses "
                         f"{len(head.convs)} ASPP branches")
        if len(used) < len(head.convs):
            notes.append(f"{prefix} branches {list(range(len(used), len(head.convs)))} keep their "
                         f"random init: {layer} has only {len(used)}")
        for b in used:
            for kind, value in branches[b].items():
                out[f"{prefix}.convs.{b}.{kind}"] = value
        notes.append(f"{layer} -> {prefix} ({len(used)} branches)")
    return out
