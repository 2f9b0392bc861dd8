"""The Python API scripts call: merges by reference, by registry triplet, or from a finished run.

The top of the package, beside the CLI: it may use every layer below (the plugin catalog for
methods, the registry for triplets); nothing below imports it.
"""
