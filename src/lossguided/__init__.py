"""Loss-guided data refinement for noisy, long-tailed image classification."""

__version__ = "0.1.0"
