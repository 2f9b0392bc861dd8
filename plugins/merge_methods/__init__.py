"""Built-in merge methods."""
