"""The reference methods, shipped as ``udabench.methods``; importing this registers them."""
from . import oracle, source_only  # noqa: F401
