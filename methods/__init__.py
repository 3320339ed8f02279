"""The reference methods, shipped as ``udabench.methods``; importing this registers them."""
