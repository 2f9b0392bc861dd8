"""Built-in mergekit-ir plugins, installed as ``mergekit_ir_plugins``.

They register through the ``mergekit_ir`` entry-point group like any third-party plugin.
"""
