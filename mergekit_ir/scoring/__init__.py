"""Re-ranking with a loaded model: the Scorer types, device/dtype choice, tokenising and batching.

Architectures (bi-encoder, cross-encoder, monoT5, causal LM) are plugins built on these pieces.
"""
