"""udabench: benchmarking and evaluation toolkit for unsupervised domain adaptation in semantic segmentation."""

__version__ = "0.1.0"
