"""rayot: Prompt-OT and its peers over the CLIP prompt-learning benchmark, on Ray."""

__version__ = "0.1.0"
