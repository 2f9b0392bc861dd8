"""A registry experiment whose Θ' is a mergekit recipe: `merge: {mergekit: recipe.yml}`.

Fast tests: the recipe is read and checked when the registry loads (its path relative to the
registry file), every problem is one line naming the registry's YAML path and the recipe's
field, the dry run shows the error and prices one merged row, and the runner's Θ' is the
tensors `mergeir merge --mergekit-config` writes (tiny BERTs of conftest's ``tiny_triplet``).
Slow test: a whole `mergeir run` of the docs' example on the offline quickstart.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from mergekit_ir.cli import main
from mergekit_ir.errors import ConfigError
from mergekit_ir.experiments.dry_run import count_passes
from mergekit_ir.experiments.registry import load_registry

DOCS = Path(__file__).resolve().parents[1] / "docs"

RECIPE = {
    "merge_method": "ties",
    "base_model": "quickstart:pretrained",
    "models": [
        {"model": "quickstart:ir", "parameters": {"weight": 1.0}},
        {"model": "quickstart:domain", "parameters": {"weight": 0.5}},
    ],
    "parameters": {"density": 0.7},
}

REGISTRY = """
datasets:
  toy: {beir: "quickstart:toy", test: test, dev: dev}
triplets:
  t:
    scorer: {kind: bi-encoder}
    pretrained: quickstart:pretrained
    domain: quickstart:domain
    ir: quickstart:ir
experiments:
  e:
    triplets: [t]
    datasets: [toy]
    merge: MERGE
EXTRA
"""


def write(tmp_path: Path, recipe: dict | None = None, merge: str = "{mergekit: recipes/r.yml}",
          extra: str = "") -> Path:  # fmt: skip
    (tmp_path / "recipes").mkdir(exist_ok=True)
    body = yaml.safe_dump(RECIPE if recipe is None else recipe, sort_keys=False)
    (tmp_path / "recipes" / "r.yml").write_text(body)
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY.replace("MERGE", merge).replace("EXTRA", extra))
    return path


def test_the_recipe_is_read_with_the_registry(tmp_path, monkeypatch):
    path = write(tmp_path)
    monkeypatch.chdir(tmp_path / "recipes")  # relative to the registry file, not the cwd
    exp = load_registry(path).experiment("e")
    recipe = exp.mergekit_recipe
    assert recipe is not None and recipe.merge_method == "ties"
    assert recipe.path == tmp_path / "recipes" / "r.yml"
    # the method it maps onto; no α grid, nothing swept, nothing tuned but λ
    assert exp.method == "ties" and exp.alphas == () and exp.grid == ()
    assert exp.merge_params == {} and not exp.tune_alpha


def test_the_dry_run_prices_one_merged_row(tmp_path):
    reg = load_registry(write(tmp_path))
    exp = reg.experiment("e")
    counts = count_passes(reg, exp, "t", ["toy"], [])
    assert counts == {"baselines": 3, "α grid on dev": 0, "Θ' on test": 1}
    reg = load_registry(write(tmp_path, extra="    fusion: {tune: true}"))
    counts = count_passes(reg, reg.experiment("e"), "t", ["toy"], ["toy"])
    assert counts["Θ' on dev (λ)"] == 1 and counts["Θ' on test"] == 1


def _bad(recipe: dict, **changes) -> dict:
    return {**recipe, **changes}


@pytest.mark.parametrize(
    ("recipe", "merge", "extra", "message"),
    [
        (  # a recipe field we do not support: named, with the registry's path
            _bad(RECIPE, tokenizer={"source": "union"}),
            None,
            "",
            r"^experiments\.e\.merge\.mergekit: recipes/r\.yml: tokenizer: not supported",
        ),
        (
            _bad(RECIPE, parameters={"density": 0.7, "rescale": True}),
            None,
            "",
            r"^experiments\.e\.merge\.mergekit: recipes/r\.yml: parameters\.rescale: true is "
            r"not supported for ties",
        ),
        (
            _bad(RECIPE, merge_method="della"),
            None,
            "",
            r"^experiments\.e\.merge\.mergekit: recipes/r\.yml: merge_method: della: not "
            r"supported",
        ),
        (
            None,
            "{mergekit: recipes/nope.yml}",
            "",
            r"^experiments\.e\.merge\.mergekit: recipes/nope\.yml: mergekit recipe not found",
        ),
        (  # mixing the recipe with a method or its parameters
            None,
            "{mergekit: recipes/r.yml, method: ties}",
            "",
            r"^experiments\.e\.merge\.method: not allowed beside mergekit:",
        ),
        (
            None,
            "{mergekit: recipes/r.yml, density: [0.3, 0.7]}",
            "",
            r"^experiments\.e\.merge\.density: not allowed beside mergekit:",
        ),
        (None, "{mergekit: 3}", "", r"^experiments\.e\.merge\.mergekit: expected the path"),
        (
            None,
            None,
            "    tuning: {alpha: {selector: pseudo-queries}}",
            r"^experiments\.e\.tuning\.alpha: merge is a mergekit recipe, whose Θ' is one "
            r"fixed model with no α",
        ),
        (
            None,
            None,
            "    reported: [{triplet: t, dataset: toy, row: merged@1, NDCG@10: 0.5}]",
            r"^experiments\.e\.reported\[0\]\.row: triplet 't' has no row 'merged@1'",
        ),
    ],
)
def test_errors_name_the_registry_path_and_the_recipe_field(
    tmp_path, recipe, merge, extra, message
):
    kw = {"merge": merge} if merge is not None else {}
    path = write(tmp_path, recipe, extra=extra, **kw)
    with pytest.raises(ConfigError, match=message) as err:
        load_registry(path)
    assert "\n" not in str(err.value)


def test_dry_run_shows_the_error_and_the_recipe(tmp_path):
    bad = write(tmp_path, _bad(RECIPE, parameters={"density": 0.7, "foo": 1}))
    res = CliRunner().invoke(main, ["run", "e", "--registry", str(bad), "--dry-run"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "error: experiments.e.merge.mergekit: recipes/r.yml: parameters.foo: unknown parameter "
        "of mergekit's ties (it takes: int8_mask, normalize, rescale, lambda, weight, density)"
    ]
    good = write(tmp_path)
    res = CliRunner().invoke(main, ["run", "e", "--registry", str(good), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert f"mergekit recipe {tmp_path / 'recipes' / 'r.yml'}: merge_method ties" in res.output
    assert "ΘT = quickstart:ir   (models[0])" in res.output
    assert "no α to tune" in res.output and "1 Θ' on test" in res.output


def test_the_runners_merge_is_the_cli_merge(tiny_triplet, tmp_path, monkeypatch):
    """Θ' of the run is what `mergeir merge --mergekit-config` writes, bit for bit, written
    once into the cache; the report's notes say where it came from."""
    from mergekit_ir.experiments.runner import RunOptions, StageTimer, TripletRunner
    from mergekit_ir.storage.cache import Cache

    recipe = {
        "merge_method": "task_arithmetic",
        "base_model": str(tiny_triplet["pretrained"]),
        "models": [
            {"model": str(tiny_triplet["ir"]), "parameters": {"weight": 1.0}},
            {"model": str(tiny_triplet["domain"]), "parameters": {"weight": 0.3}},
        ],
    }
    path = write(tmp_path, recipe)
    text = path.read_text()
    text = text.replace("quickstart:pretrained", str(tiny_triplet["pretrained"]))
    text = text.replace("quickstart:domain", str(tiny_triplet["domain"]))
    text = text.replace("quickstart:ir", str(tiny_triplet["ir"]))
    path.write_text(text.replace("{kind: bi-encoder}", "{kind: cross-encoder}"))
    reg = load_registry(path)
    exp = reg.experiment("e")
    opts = RunOptions(tmp_path / "out", Cache(tmp_path / "cache"), progress=False, echo=print)
    runner = TripletRunner(exp, reg.triplet("t"), reg, opts, StageTimer())
    folder = runner.recipe_folder()
    assert folder.parent == tmp_path / "cache" / "recipe-merge"
    assert runner.recipe_folder() == folder  # once: the second call finds it
    assert runner.recipe_notes() == [
        "Θ' (mergekit: r.yml) is mergekit recipe "
        f"{tmp_path / 'recipes' / 'r.yml'}'s merge (merge_method task_arithmetic, as "
        "mergekit-ir's task_arithmetic; the same tensors as `mergeir merge --mergekit-config`); "
        "no α was tuned"
    ]
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(
        main, ["merge", "--mergekit-config", "recipes/r.yml", "--out", "cli", "-q"]
    )
    assert res.exit_code == 0, res.output
    ours, cli = (
        load_file(folder / "model.safetensors"),
        load_file(tmp_path / "cli" / "model.safetensors"),
    )
    assert ours.keys() == cli.keys() and all(torch.equal(ours[k], cli[k]) for k in ours)
    assert (folder / "mergekit_config.yml").read_text() == (
        tmp_path / "recipes" / "r.yml"
    ).read_text()

    # a recipe merging a model the triplet does not hold: the notes say so
    recipe["models"][1]["model"] = str(tiny_triplet["ir_base"])
    reg = load_registry(write(tmp_path, recipe, extra="").parent / "registry.yaml")
    runner = TripletRunner(reg.experiment("e"), reg.triplet("t"), reg, opts, StageTimer())
    notes = runner.recipe_notes()
    assert len(notes) == 2 and str(tiny_triplet["ir_base"]) in notes[1]
    assert "not this triplet's checkpoints" in notes[1]


@pytest.mark.slow
def test_the_docs_example_runs_end_to_end(tmp_path):
    """`mergeir run` on the quickstart with Θ' from a recipe: the baselines as usual, one
    merged row labelled by the recipe, the notes, a rerun from the cache, --from-run's hint."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["--registry", str(DOCS / "examples-mergekit-recipe.yaml"), "--cache-dir", str(cache)]
    res = CliRunner().invoke(main, ["run", "quickstart-recipe", *args, "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    (section,) = data["sections"]
    assert [r["key"] for r in section["rows"]] == [
        "bm25",
        "pretrained",
        "domain",
        "ir",
        "merged@best",
    ]
    merged = section["rows"][-1]
    assert merged["label"] == "Θ' (mergekit: examples-mergekit-recipe.yml)"
    assert merged["alpha"] is None and not data.get("alpha_ablation")
    assert any("no α was tuned" in n for n in section["notes"])
    md = (out / "results.md").read_text()
    assert "Θ' (mergekit: examples-mergekit-recipe.yml) vs ΘT" in md
    again = CliRunner().invoke(main, ["run", "quickstart-recipe", *args, "--out", str(out)])
    assert again.exit_code == 0 and re.search(r"cache: \d+ hits, 0 misses", again.output)
    res = CliRunner().invoke(main, ["merge", "--from-run", str(out), "--out", str(tmp_path / "m")])
    assert res.exit_code == 2 and "--mergekit-config" in res.output
