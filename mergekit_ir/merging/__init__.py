"""Weights: reading checkpoints, aligning names, task vectors, the streaming merge and the in-place α sweep.

Nothing here knows about datasets or scores; merge methods themselves are plugins.
"""
