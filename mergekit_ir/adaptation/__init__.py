"""Domain adaptation: continue pre-training a checkpoint on an unlabelled corpus (ΘD)."""
