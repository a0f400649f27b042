"""Hyperspectral classification (HybridSN family) and denoising (DnCNN) pipeline."""

__version__ = "0.1.0"
