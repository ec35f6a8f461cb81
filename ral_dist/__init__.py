"""ral_dist: Reinforced Attention Learning for vision-language models on Ray."""

__version__ = "0.1.0"
