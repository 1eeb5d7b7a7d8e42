"""rayot: prompt-learning methods for CLIP, optimal-transport regularised and their peers, over the
CLIP prompt-learning benchmark, on Ray."""

__version__ = "0.4.0"
