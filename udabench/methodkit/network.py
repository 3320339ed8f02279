"""What a method may ask about the networks udabench can build (without importing the registry)."""
from __future__ import annotations

from udabench.registry import HEADS, MODELS


def missing_network(backbone: str, head: str) -> list[str]:
    """The parts of a recipe's network that no installed module registers, named for a message
    (e.g. ``["backbone 'mit_b5'"]``); [] when both are available."""
    missing = []
    if backbone not in MODELS.names():
        missing.append(f"backbone '{backbone}'")
    if head not in HEADS.names():
        missing.append(f"head '{head}'")
    return missing
