"""Built-in α selectors: ``dev`` (labelled), ``pseudo-queries`` and ``consensus`` (label-free)."""
