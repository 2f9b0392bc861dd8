"""Bringing a mergekit recipe: a ``mergekit-yaml`` config merged by our engine, same tensors.

The Python face of ``mergeir merge --mergekit-config`` (docs/merging.md, "Bringing a mergekit
recipe"): :func:`load_recipe` reads and checks the YAML, :func:`prepare_recipe_merge` maps it
onto our engine, :func:`write_recipe_merge` writes it, :func:`describe_recipe` says what it
resolves to. The implementation is :mod:`mergekit_ir.experiments.recipe`, one layer down,
because a registry experiment may name a recipe too (``merge: {mergekit: recipe.yml}``): the
registry checks it when it loads and the runner merges it, with this same code.
"""

from __future__ import annotations

from mergekit_ir.experiments.recipe import (
    FP32_IN_MERGEKIT,
    INPUT,
    NON_BASE,
    SHARED,
    SPECS,
    TOKENIZER_FILES,
    UNSUPPORTED_METHODS,
    DtypeSource,
    Recipe,
    RecipeMerge,
    RecipeModel,
    Roles,
    SideFiles,
    compress,
    describe_recipe,
    evaluate,
    finish_side_files,
    layerwise_weights,
    load_recipe,
    positions,
    prepare_recipe_merge,
    roles,
    write_recipe_merge,
)

__all__ = [
    "FP32_IN_MERGEKIT",
    "INPUT",
    "NON_BASE",
    "SHARED",
    "SPECS",
    "TOKENIZER_FILES",
    "UNSUPPORTED_METHODS",
    "DtypeSource",
    "Recipe",
    "RecipeMerge",
    "RecipeModel",
    "Roles",
    "SideFiles",
    "compress",
    "describe_recipe",
    "evaluate",
    "finish_side_files",
    "layerwise_weights",
    "load_recipe",
    "positions",
    "prepare_recipe_merge",
    "roles",
    "write_recipe_merge",
]
