"""The built-in mergekit-ir plugins. This folder installs as the package ``mergekit_ir_plugins``.

Each module registers through the ``mergekit_ir`` entry-point group (see ``pyproject.toml``)
exactly as a third-party plugin does, and imports only the public API of ``mergekit_ir``
(a test checks this): reading one is reading how to write your own.

- ``merge_methods/``: task_arithmetic, ties, dare_ties/dare_linear, magnitude_prune, breadcrumbs
- ``scorers/``: bi-encoder, cross-encoder, monot5, causal-lm
- ``first_stages/``: bm25s (plain and Elasticsearch-like analyzers)
"""
