"""Data and numbers: datasets, first-stage types, metrics, fusion and significance tests.

Pure functions over runs and qrels; retrieval backends themselves are plugins.
"""
