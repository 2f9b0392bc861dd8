"""Checkpoint references: where a checkpoint comes from (folder, hub, quickstart)."""
