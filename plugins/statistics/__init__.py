"""Built-in statistics for data-aware merge methods (``register_statistics``)."""
