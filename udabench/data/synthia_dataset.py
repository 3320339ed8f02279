"""SYNTHIA-RAND-CITYSCAPES (Ros et al. 2016): rendered frames with 16-bit 3-channel labels, the
class id in the red channel (the green one holds instance ids)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from udabench import taxonomy
from udabench.data.registry import register_dataset
from udabench.data.spec import DatasetSpec, FilePattern

if TYPE_CHECKING:
    import torch

    from udabench.data.pngio import PngInfo

# A label is suspicious when most of its pixels hold ids outside the table (0..22).
UNKNOWN_SHARE_WARNING = 0.5
_CHANNELS = ("red", "green", "blue")


@register_dataset
class SYNTHIA(DatasetSpec):
    """SYNTHIA-RAND-CITYSCAPES: 9,400 rendered frames, 16-bit labels (class id in red)."""

    name = "synthia"
    title = "SYNTHIA-RAND-CITYSCAPES"
    url = "https://synthia-dataset.net (SYNTHIA-RAND-CITYSCAPES)"
    nominal_size = (1280, 760)
    images = FilePattern("RGB/{id}.png")
    labels = FilePattern("GT/LABELS/{id}.png")
    example_id = "0000000"
    label_encoding = "16-bit 3-channel (class id in the red channel)"
    label_channels = 3
    label_bit_depth = 16
    id_channel = 0
    lut = taxonomy.SYNTHIA_TO_TRAIN_ID  # 65536 entries: every uint16 value
    max_label_value = 22
    unknown_ids = "ignore"  # the protocol maps ids outside the table to ignore

    def check_label_header(self, info: PngInfo) -> str | None:
        if info.channels == 3 and info.bit_depth == 16:
            return None
        return (f"{info.describe()}: SYNTHIA labels must be 16-bit 3-channel PNGs (an 8-bit copy "
                "has lost the class ids; re-extract the originals)")

    def encoding_message(self, path: Path, found: str) -> str:
        return (f"SYNTHIA label {path} is {found}; SYNTHIA-RAND-CITYSCAPES labels must be the "
                f"original 16-bit 3-channel PNGs (class id in the red channel): a tool that re-saved "
                f"them in 8 bits (Pillow, OpenCV without IMREAD_UNCHANGED, imageio) destroyed the "
                f"ids; re-extract the original files")

    def label_warnings(self, raw: torch.Tensor, ids: torch.Tensor, path: Path) -> list[str]:
        import torch
        out = []
        known = self.map_ids(ids) != taxonomy.IGNORE
        if not bool(known.any()):  # red holds no class: are the ids in another channel?
            for channel in (1, 2):
                other = self.map_ids(raw[channel].to(torch.int32)) != taxonomy.IGNORE
                if float(other.float().mean()) >= 0.5:
                    out.append(f"the red channel holds no class id while the {_CHANNELS[channel]} "
                               f"channel does for {100 * float(other.float().mean()):.0f}% of the "
                               f"pixels: the class ids are in the wrong channel (SYNTHIA keeps "
                               f"them in red); re-extract the original files")
                    break
        unknown = self.unknown_id_pixels(ids)
        if unknown >= UNKNOWN_SHARE_WARNING * ids.numel():
            out.append(f"{100 * unknown / ids.numel():.0f}% of the pixels hold ids above "
                       f"{self.max_label_value} (not SYNTHIA classes): the file is probably not a "
                       f"SYNTHIA-RAND-CITYSCAPES label (instance ids in red?)")
        return out
