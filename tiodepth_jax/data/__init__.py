"""Datasets for training and evaluation (``synthetic``: procedural stereo scenes with exact ground truth)."""
