"""fedpurel-lite: long-tailed personalized federated learning with CLIP foundation models.

A small re-implementation of FedPuReL (gradient purification + residual personalization),
built for notebooks, tests and reproducible figures.
"""

__version__ = "0.1.0"
