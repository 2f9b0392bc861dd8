"""Built-in first stages."""
