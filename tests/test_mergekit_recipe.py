"""Bringing a mergekit recipe (``mergekit_ir.api.recipe``, implemented in ``experiments.recipe``).

Fast tests: reading a recipe, every field we reject (one line naming it), mergekit's parameter
semantics (substring filters, gradients with t = 0 on the pre/post weights), the mapping onto
our methods, dtype and side files, on tiny hand-written Llama checkpoints.

Slow tests (oracle): the same tensors as ``mergekit-yaml`` on the same recipes, for every
method we map. mergekit is an optional dependency (``pip install .[oracle]``); without it or
without ``mergekit-yaml`` on PATH they skip. mergekit 0.1.5 runs on Llama (not on BERT), so
the checkpoints are tiny ``LlamaForCausalLM`` ones: 3 layers (so a gradient is interpolated
at t = 0.5), hidden size 32.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from mergekit_ir.api.recipe import (
    Recipe,
    compress,
    describe_recipe,
    evaluate,
    layerwise_weights,
    load_recipe,
    positions,
    prepare_recipe_merge,
    roles,
    write_recipe_merge,
)
from mergekit_ir.errors import ConfigError
from mergekit_ir.merging.checkpoint import TensorSource
from mergekit_ir.params import TensorPosition, layer_index, resolve

HIDDEN, INTER, LAYERS, HEADS, KV_HEADS = 32, 64, 3, 4, 2


def llama_state(vocab: int, layers: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """LlamaForCausalLM's tensors (names and shapes as transformers saves them)."""
    head_dim = HIDDEN // HEADS
    shapes = {"model.embed_tokens.weight": (vocab, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
            p + "self_attn.k_proj.weight": (KV_HEADS * head_dim, HIDDEN),
            p + "self_attn.v_proj.weight": (KV_HEADS * head_dim, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": (INTER, HIDDEN),
            p + "mlp.up_proj.weight": (INTER, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, INTER),
            p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,),
        }
    shapes |= {"model.norm.weight": (HIDDEN,), "lm_head.weight": (vocab, HIDDEN)}
    return {
        k: (1.0 + 0.1 * torch.randn(s, generator=gen))
        if k.endswith("norm.weight")
        else 0.05 * torch.randn(s, generator=gen)
        for k, s in shapes.items()
    }


def write_llama(
    folder: Path,
    seed: int,
    base: dict[str, torch.Tensor] | None = None,
    vocab: int = 48,
    layers: int = LAYERS,
) -> dict[str, torch.Tensor]:
    """A tiny Llama checkpoint: random, or ``base`` plus noise (a fine-tune of it)."""
    gen = torch.Generator().manual_seed(seed)
    state = llama_state(vocab, layers, gen)
    if base is not None:
        state = {
            k: base[k] + 0.2 * v.sub(1.0 if k.endswith("norm.weight") else 0.0)
            for k, v in state.items()
        }
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_hidden_layers": layers,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HIDDEN // HEADS,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-6,
        "vocab_size": vocab,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return state


@pytest.fixture(scope="module")
def llamas(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llamas")
    base = write_llama(root / "base", 0)
    for i, name in enumerate(("m1", "m2", "m3"), 1):
        write_llama(root / name, i, base)
    for name in ("base", "m1", "m2", "m3"):  # stand-ins: tell whose tokenizer the output got
        (root / name / "tokenizer.json").write_text(json.dumps({"from": name}))
    return {name: root / name for name in ("base", "m1", "m2", "m3")}


def write_recipe(folder: Path, body: dict | str, name: str = "recipe.yml") -> Path:
    path = folder / name
    path.write_text(body if isinstance(body, str) else yaml.safe_dump(body, sort_keys=False))
    return path


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


# --------------------------------------------------------------------------------------
# reading


def test_load_recipe_reads_models_base_parameters_dtype(tmp_path):
    path = write_recipe(
        tmp_path,
        """
merge_method: ties
base_model: base@v1
models:
  - model: base@v1
  - model: org/m1
    parameters: {weight: 0.7, density: [0.3, 0.8]}
  - model: ./m2
    parameters:
      weight: [{filter: mlp, value: 0.2}, {value: 0.5}]
      density: 0.5
parameters: {normalize: false, int8_mask: true}
dtype: torch.float32
out_dtype: bfloat16
tokenizer_source: base
""",
    )
    r = load_recipe(path)
    assert isinstance(r, Recipe) and r.merge_method == "ties" and r.form == "models"
    assert [m.text for m in r.models] == ["base@v1", "org/m1", "./m2"]
    assert r.base_model is r.models[0] and r.base_model.revision == "v1"
    assert [m.where for m in r.non_base()] == ["models[1]", "models[2]"]
    assert r.inputs() == r.models
    assert r.models[1].parameters == {"weight": 0.7, "density": [0.3, 0.8]}
    assert r.parameters == {"normalize": False, "int8_mask": True}
    assert (r.dtype, r.out_dtype, r.tokenizer_source) == ("float32", "bfloat16", "base")


def test_load_recipe_whole_model_slice_and_unlisted_base(tmp_path):
    sliced = load_recipe(
        write_recipe(
            tmp_path,
            {
                "slices": [
                    {
                        "sources": [
                            {"model": "a", "layer_range": [0, 3]},
                            {"model": "b", "layer_range": [0, 3]},
                        ],
                        "parameters": {"t": [0, 1]},
                    }
                ],
                "merge_method": "slerp",
                "base_model": "a",
                "parameters": {"t": 0.5},
            },
        )
    )
    assert sliced.form == "slices" and sliced.slice_parameters == {"t": [0, 1]}
    assert sliced.base_model is sliced.models[0] and sliced.models[1].layer_range == (0, 3)
    unlisted = load_recipe(
        write_recipe(
            tmp_path,
            {
                "merge_method": "task_arithmetic",
                "base_model": "b0",
                "models": [{"model": "x", "parameters": {"weight": 1}}],
            },
            "u.yml",
        )
    )
    assert not unlisted.base_listed and [m.text for m in unlisted.inputs()] == ["x", "b0"]


TIES = {
    "merge_method": "ties",
    "base_model": "base",
    "models": [
        {"model": "base"},
        {"model": "m1", "parameters": {"weight": 1.0, "density": 0.5}},
        {"model": "m2", "parameters": {"weight": 0.5, "density": 0.5}},
    ],
}


def _with(recipe: dict, **changes) -> dict:
    out = json.loads(json.dumps(recipe))
    for path, value in changes.items():
        node = out
        parts = path.split("__")
        for p in parts[:-1]:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        if value is None:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return out


SLERP = {
    "merge_method": "slerp",
    "base_model": "base",
    "models": [{"model": "base"}, {"model": "m1"}],
    "parameters": {"t": 0.3},
}

REJECTED = {
    "slices": (
        {
            **SLERP,
            "models": None,
            "slices": [{"sources": [{"model": "a", "layer_range": [0, 2]}]}] * 2,
        },
        "slices: not supported (only whole-model merges",
    ),
    "partial layer_range": (
        _with(
            SLERP,
            models=None,
            slices=[
                {
                    "sources": [
                        {"model": "base", "layer_range": [0, 3]},
                        {"model": "m1", "layer_range": [4, 8]},
                    ]
                }
            ],
        ),
        "slices[0].sources[1].layer_range: [4, 8]: not supported (only whole-model merges",
    ),
    "modules": ({**TIES, "modules": {}}, "modules: not supported (only whole-model merges)"),
    "tokenizer": ({**TIES, "tokenizer": {"source": "union"}}, "tokenizer: not supported"),
    "chat_template": ({**TIES, "chat_template": "chatml"}, "chat_template: not supported"),
    "unknown key": ({**TIES, "name": "my-merge"}, "name: unknown recipe key"),
    "unknown parameter": (
        _with(TIES, models__2__parameters__foo=1),
        "models[2].parameters.foo: unknown parameter of mergekit's ties (it takes: int8_mask",
    ),
    "layer_range in models": (
        _with(TIES, models__1__layer_range=[0, 3]),
        "models[1].layer_range: not supported (layer ranges belong in slices:",
    ),
    "lora": (
        _with(TIES, models__1__model="m1+adapter"),
        "models[1].model: 'm1+adapter': a model+LoRA",
    ),
    "dare_ties": (
        {**TIES, "merge_method": "dare_ties"},
        "merge_method: dare_ties: not supported (mergekit draws",
    ),
    "della": ({**TIES, "merge_method": "della"}, "merge_method: della: not supported"),
    "sce": ({**TIES, "merge_method": "sce"}, "merge_method: sce: not supported"),
    "unknown method": (
        {**TIES, "merge_method": "frankenmerge"},
        "merge_method: 'frankenmerge' is not a mergekit",
    ),
    "union tokenizer": (
        {**TIES, "tokenizer_source": "union"},
        "tokenizer_source: union: not supported",
    ),
    "tokenizer of no model": (
        {**TIES, "tokenizer_source": "m9"},
        "tokenizer_source: 'm9' is not one of",
    ),
    "bad dtype": ({**TIES, "dtype": "int8"}, "dtype: 'int8' is not one of float32"),
    "rescale": (
        _with(TIES, parameters__rescale=True),
        "parameters.rescale: true is not supported for ties",
    ),
    "lambda with normalize": (
        _with(TIES, parameters__lambda=0.5),
        "parameters.lambda: 0.5 with normalize: true is not supported",
    ),
    "negative weight with normalize": (
        _with(TIES, models__2__parameters__weight=-0.5),
        "models[2].parameters.weight: -0.5: a negative weight with normalize: true",
    ),
    "densities differ": (
        _with(TIES, models__2__parameters__density=0.3),
        "models[2].parameters.density: 0.3 differs from models[1]'s 0.5",
    ),
    "density 0": (
        _with(TIES, models__1__parameters__density=0, models__2__parameters__density=0),
        "models[1].parameters.density: 0 must be greater than 0",
    ),
    "no base": ({**TIES, "base_model": None}, "base_model: required by ties"),
    "nuslerp without base": (
        {"merge_method": "nuslerp", "models": [{"model": "a", "parameters": {"weight": 1}}] * 1},
        "base_model: required by nuslerp (without one mergekit merges the models themselves",
    ),
    "slerp of three": (
        _with(SLERP, models=[{"model": "base"}, {"model": "m1"}, {"model": "m2"}]),
        "models: slerp needs exactly one model beside base_model, got 2",
    ),
    "t outside [0, 1]": (_with(SLERP, parameters__t=1.5), "parameters.t: 1.5 is outside [0, 1]"),
    "shared parameter per model": (
        _with(SLERP, models__1__parameters={"t": 0.2}),
        "models[1].parameters.t: t is recipe-wide in slerp",
    ),
    "missing weight": (
        _with(TIES, models__1__parameters__weight=None),
        "models[1].parameters.weight: required by ties but not set",
    ),
    "not a number": (
        _with(SLERP, parameters__t=[0, "abc"]),
        "parameters.t[1]: 'abc' is not a number",
    ),
    "bad rule": (
        _with(SLERP, parameters__t=[{"filter": "mlp", "value": 0.2, "scope": "x"}]),
        "parameters.t[0].scope: a rule is {filter: <text>, value: <value>}",
    ),
    "listed twice": (_with(TIES, models__2__model="m1"), "models[2].model: m1 is listed twice"),
    "linear without normalize": (
        {
            "merge_method": "linear",
            "models": [
                {"model": "a", "parameters": {"weight": 1.0}},
                {"model": "b", "parameters": {"weight": 0.5}},
            ],
            "parameters": {"normalize": False},
        },
        "models[0].parameters.weight: 1 with normalize: false is not supported",
    ),
    "karcher of one": (
        {"merge_method": "karcher", "models": [{"model": "a"}]},
        "models: karcher needs at least two models, got 1",
    ),
    "multislerp eps": (
        {
            "merge_method": "multislerp",
            "base_model": "base",
            "models": [{"model": "m1", "parameters": {"weight": 1}}],
            "parameters": {"eps": 1e-6},
        },
        "parameters.eps: 1e-06: only mergekit's default 1e-8 is supported",
    ),
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_rejected_field_is_one_line_naming_it(tmp_path, case):
    body, expected = REJECTED[case]
    body = {k: v for k, v in body.items() if v is not None}
    path = write_recipe(tmp_path, body)
    with pytest.raises(ConfigError) as exc:
        load_recipe(path)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: {expected}"), msg


def test_describe_notes_low_precision_arithmetic(tmp_path):
    lines = describe_recipe(load_recipe(write_recipe(tmp_path, {**TIES, "dtype": "bfloat16"})))
    assert lines[-3] == "  dtype: read as bfloat16, merged in float32, written as bfloat16"
    assert lines[-2].startswith("  note: mergekit does ties's arithmetic in bfloat16")
    assert lines[1] == "  ΘT = m1   (models[1])"  # weight 1: the IR model
    linear = {"merge_method": "linear", "models": [{"model": "a"}, {"model": "b"}]}
    linear |= {"parameters": {"weight": 1}, "dtype": "bfloat16"}
    assert not any(
        "note:" in x for x in describe_recipe(load_recipe(write_recipe(tmp_path, linear)))
    )


def test_not_a_file_or_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="mergekit recipe not found"):
        load_recipe(tmp_path / "missing.yml")
    with pytest.raises(ConfigError, match="is a mapping"):
        load_recipe(write_recipe(tmp_path, "- a\n- b\n"))


# --------------------------------------------------------------------------------------
# mergekit's semantics


def test_evaluate_is_mergekits_evaluate_setting():
    assert evaluate(0.3, "x", 0.7) == 0.3
    assert evaluate("0.5", "x", 0.0) == 0.5  # a YAML string read as a number, as pydantic
    assert evaluate([0.0, 1.0, 0.5], "x", 0.25) == pytest.approx(0.5)
    assert evaluate([0.0, 1.0, 0.5], "x", 0.75) == pytest.approx(0.75)
    assert evaluate([True, False], "x", 0.4, bool) is True  # non-numbers are picked, not mixed
    rules = [{"filter": "self_attn", "value": [0, 1]}, {"filter": "*", "value": 0.9}]
    assert evaluate(rules, "model.layers.1.self_attn.q_proj.weight", 1.0) == 1.0
    assert evaluate(rules, "model.norm.weight", 1.0) == 0.9
    # filters are substrings, not regexes; no match and no catch-all rule gives None
    assert evaluate([{"filter": "layers.1", "value": 2}], "model.layers.10.mlp", 0) == 2
    assert evaluate([{"filter": "q_proj$", "value": 2}], "a.q_proj.weight", 0) is None
    assert evaluate({"value": 0.4}, "anything", 0.5) == 0.4


def test_positions_put_pre_and_post_weights_at_t_0(llamas):
    ts = {p.name: p.t for p in positions(TensorSource(llamas["base"]))}
    assert ts["model.layers.0.mlp.up_proj.weight"] == 0.0
    assert ts["model.layers.1.mlp.up_proj.weight"] == 0.5
    assert ts["model.layers.2.mlp.up_proj.weight"] == 1.0
    # mergekit plans embeddings, final norm and head with t = 0 (ours would put the last two at 1)
    assert ts["model.embed_tokens.weight"] == ts["model.norm.weight"] == ts["lm_head.weight"] == 0.0


def test_compress_gives_rules_on_exact_keys():
    assert compress({"a.weight": 0.5, "b.weight": 0.5}) == 0.5
    values = {"layers.0.x": 0.1, "layers.1.x": 0.2, "layers.10.x": 0.2, "norm.weight": 0.2}
    rules = compress(values)
    assert rules[-1] == {"value": 0.2} and len(rules) == 2
    for key, value in values.items():
        assert resolve(rules, TensorPosition(key, layer_index(key), 11)) == value


def test_layerwise_weights_passes_one_weight_per_vector():
    from mergekit_ir.plugin_host import catalog

    ta = catalog().merge_method("task_arithmetic")
    wrapped = layerwise_weights(ta, 2)
    assert {p.name for p in wrapped.params} == {"alpha", "weight_1", "weight_2"}
    assert all(p.per_tensor for p in wrapped.params)
    t, a, b = torch.zeros(3), torch.ones(3), torch.full((3,), 2.0)
    out = wrapped.merge(t, [a, b], alpha=1.0, weight_1=0.5, weight_2=0.25)
    assert torch.equal(out, torch.full((3,), 1.0))


# --------------------------------------------------------------------------------------
# preparing and writing (our side only)


def gradient_slerp(llamas: dict[str, Path]) -> dict:
    return {
        "slices": [
            {
                "sources": [
                    {"model": str(llamas["base"]), "layer_range": [0, LAYERS]},
                    {"model": str(llamas["m1"]), "layer_range": [0, LAYERS]},
                ]
            }
        ],
        "merge_method": "slerp",
        "base_model": str(llamas["base"]),
        "parameters": {
            "t": [
                {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
                {"value": 0.5},
            ]
        },
        "dtype": "float32",
    }


def test_plan_shows_what_a_gradient_resolves_to(tmp_path, llamas):
    recipe = load_recipe(write_recipe(tmp_path, gradient_slerp(llamas)))
    prepared = prepare_recipe_merge(recipe)
    table = prepared.plan.table(prepared.job.params)
    rows = {line.split()[1]: line for line in table.splitlines()[1:-1]}
    # self_attn: [0, .5, .3, .7, 1] at t = 0, 0.5, 1; mlp reversed; the rest 0.5
    assert rows["model.layers.0.self_attn.q_proj.weight"].endswith("alpha=0")
    assert rows["model.layers.1.self_attn.q_proj.weight"].endswith("alpha=0.3")
    assert rows["model.layers.2.mlp.up_proj.weight"].endswith("alpha=0")
    assert rows["model.layers.1.mlp.up_proj.weight"].endswith("alpha=0.7")
    assert rows["model.norm.weight"].endswith("alpha=0.5")
    lines = describe_recipe(recipe, prepared)
    assert lines[0].endswith("merge_method slerp (2 models, one whole-model slice)")
    assert lines[1].startswith(f"  ΘT = {llamas['base']}") and lines[3].startswith("  ΘD1 = ")
    assert "as mergekit-ir's slerp: ΘT = Θ0 = base, ΘD = the other model; alpha = t" in lines[4]
    assert '"alpha": "layer-wise' in lines[5]
    assert (
        lines[-1] == f"  config from ΘT ({llamas['base']}); tokenizer copied from {llamas['base']}"
    )


def test_layerwise_value_our_method_takes_once_is_rejected(tmp_path, llamas):
    path = write_recipe(
        tmp_path,
        {
            "merge_method": "ram",
            "base_model": str(llamas["base"]),
            "models": [{"model": str(llamas["m1"])}],
            "parameters": {"epsilon": [1e-5, 1e-3]},
        },
    )
    load_recipe(path)  # layer-wise values are checked per tensor, once the tensors are known
    with pytest.raises(ConfigError) as exc:
        prepare_recipe_merge(path)
    assert str(exc.value) == (
        f"{path}: parameters.epsilon: a layer-wise value (gradient or filter) is not supported "
        "for ram's epsilon: mergekit-ir takes one value there"
    )


def test_whole_model_slice_must_take_every_layer(tmp_path, llamas):
    body = gradient_slerp(llamas)
    body["slices"][0]["sources"][1]["layer_range"] = [0, 2]
    path = write_recipe(tmp_path, body)
    with pytest.raises(ConfigError, match=r"sources\[1\]\.layer_range: \[0, 2\]: not supported"):
        prepare_recipe_merge(path)


def test_out_dtype_config_and_side_files(tmp_path, llamas):
    body = {
        "merge_method": "model_stock",  # ΘT is m1 (Θ0 the base)
        "base_model": str(llamas["base"]),
        "models": [{"model": str(llamas[m])} for m in ("m1", "m2")],
        "dtype": "float32",
    }
    fp32 = tmp_path / "fp32"
    write_recipe_merge(prepare_recipe_merge(write_recipe(tmp_path, body)), fp32, progress=False)
    bf16 = tmp_path / "bf16"
    path = write_recipe(tmp_path, {**body, "out_dtype": "bfloat16"}, "bf16.yml")
    write_recipe_merge(prepare_recipe_merge(path), bf16, progress=False)
    a, b = tensors(fp32), tensors(bf16)
    assert {t.dtype for t in b.values()} == {torch.bfloat16}
    for k in a:  # merged in fp32 from the stored weights, then cast: the fp32 result, rounded
        assert torch.equal(a[k].to(torch.bfloat16), b[k]), k
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((bf16 / "tokenizer.json").read_text()) == {"from": "m1"}  # ΘT's
    assert (bf16 / "mergekit_config.yml").read_text() == path.read_text()
    made = json.loads((bf16 / "mergekit_ir.json").read_text())["sources"]
    assert made["ΘT"] == str(llamas["m1"]) and made["mergekit merge_method"] == "model_stock"


@pytest.mark.parametrize("source", ["base", "m2"])
def test_tokenizer_source_replaces_the_tokenizer(tmp_path, llamas, monkeypatch, source):
    import mergekit_ir.experiments.recipe as rec  # where prepare_recipe_merge looks it up

    monkeypatch.setattr(rec, "_check_plain_tokenizer", lambda *a: None)  # vocabularies: slow test
    body = {
        "merge_method": "linear",
        "base_model": str(llamas["base"]),
        "models": [{"model": str(llamas[m])} for m in ("m1", "m2")],
        "parameters": {"weight": 1.0},
        "tokenizer_source": source if source == "base" else str(llamas[source]),
    }
    out = tmp_path / "out"
    prepared = prepare_recipe_merge(write_recipe(tmp_path, body))
    assert prepared.roles.ir.text == str(llamas["m1"])
    write_recipe_merge(prepared, out, progress=False)
    assert json.loads((out / "tokenizer.json").read_text()) == {"from": source}


def ta(llamas, *weights, **parameters) -> dict:
    return {
        "merge_method": parameters.pop("method", "task_arithmetic"),
        "base_model": str(llamas["base"]),
        "models": [
            {"model": str(llamas[f"m{i}"]), "parameters": {"weight": w}}
            for i, w in enumerate(weights, 1)
        ],
        **({"parameters": parameters} if parameters else {}),
    }


@pytest.mark.parametrize(
    "weights, parameters, ir",
    [
        ((0.5, 1.0), {}, "m2"),  # Θ' = base + τ_2 + 0.5·τ_1 = m2 + 0.5·τ_1
        ((1.0, 1), {"method": "ties"}, "m1"),  # ties' normalize counts τT's weight 1 too
        ((1.0, 0.5), {"lambda": 1.2}, "base"),
        ((1.0, 0.5), {"normalize": True}, "base"),  # τT's weight would be 1/1.5
        (([1.0, 0.5], 1.0), {}, "m2"),  # m1's weight varies
        ((1.0,), {}, "base"),  # ΘT needs a domain input beside it
    ],
)
def test_a_model_with_weight_1_is_the_ir_model(tmp_path, llamas, weights, parameters, ir):
    recipe = load_recipe(write_recipe(tmp_path, ta(llamas, *weights, **parameters)))
    r = roles(recipe)
    assert r.ir.text == str(llamas[ir]) and r.pretrained.text == str(llamas["base"])
    assert [d.text for d in r.domains] == [m.text for m in recipe.non_base() if m is not r.ir]


def test_the_ir_models_own_head_is_kept(tmp_path, llamas):
    """A reranker's head that the base lacks stays in Θ' when the recipe gives it weight 1."""
    ir = tmp_path / "ir"
    shutil.copytree(llamas["m1"], ir)
    state = load_file(ir / "model.safetensors")
    state["score.weight"] = torch.randn(1, HIDDEN)
    save_file(state, str(ir / "model.safetensors"))
    body = ta(llamas, 1.0, 0.3)
    body["models"][0]["model"] = str(ir)
    body["dtype"] = "float32"
    out = tmp_path / "out"
    write_recipe_merge(prepare_recipe_merge(write_recipe(tmp_path, body)), out, progress=False)
    merged, m1, base = tensors(out), tensors(llamas["m1"]), tensors(llamas["base"])
    assert torch.equal(merged["score.weight"], state["score.weight"])
    k = "model.layers.1.mlp.up_proj.weight"  # ΘT + 0.3·τ_2
    want = m1[k] + 0.3 * (tensors(llamas["m2"])[k] - base[k])
    assert torch.allclose(merged[k], want, rtol=1.3e-6, atol=1e-5)


# --------------------------------------------------------------------------------------
# oracle: the same tensors as mergekit-yaml


def oracle_recipes(m: dict[str, str]) -> dict[str, dict]:
    """Recipes over the tiny Llamas (absolute paths), one or more per method we map."""
    base = m["base"]

    def model(name, **params):
        return {"model": m[name], **({"parameters": params} if params else {})}

    f32 = {"dtype": "float32"}
    return {
        "task_arithmetic": {
            "merge_method": "task_arithmetic",
            "base_model": base,
            "models": [model("m1", weight=0.7), model("m2", weight=[0.2, 0.9, 0.4])],
            **f32,
        },
        "task_arithmetic_normalize_lambda_filter": {
            "merge_method": "task_arithmetic",
            "base_model": base,
            "models": [
                model("m1", weight=[{"filter": "mlp", "value": 0.3}, {"value": 1.0}]),
                model("m2", weight=0.5),
            ],
            "parameters": {"normalize": True, "lambda": 1.3},
            **f32,
        },
        "ties": {
            "merge_method": "ties",
            "base_model": base,
            "models": [
                model("base"),
                model("m1", weight=1.0, density=0.5),
                model("m2", weight=0.6, density=0.5),
            ],
            **f32,
        },
        "ties_no_normalize_density_gradient": {
            "merge_method": "ties",
            "base_model": base,
            "models": [model("m1", weight=1.0), model("m2", weight=0.4)],
            "parameters": {"normalize": False, "density": [0.3, 0.8], "lambda": 1.2},
            **f32,
        },
        "breadcrumbs": {
            "merge_method": "breadcrumbs",
            "base_model": base,
            "models": [model("m1", weight=1.0), model("m2", weight=0.5)],
            "parameters": {"density": 0.8, "gamma": 0.05},
            **f32,
        },
        "breadcrumbs_ties": {
            "merge_method": "breadcrumbs_ties",
            "base_model": base,
            "models": [model("m1", weight=0.8), model("m2", weight=0.5)],
            "parameters": {"density": 0.7, "gamma": 0.02, "normalize": True},
            **f32,
        },
        "linear": {
            "merge_method": "linear",
            "models": [model("m1", weight=0.3), model("m2", weight=0.7)],
            **f32,
        },
        "linear_three_with_base": {
            "merge_method": "linear",
            "base_model": base,
            "models": [model("m1", weight=0.5), model("m2", weight=[0.1, 0.6])],
            "parameters": {"weight": 0.2},  # the base's: mergekit adds it as an input
            **f32,
        },
        "linear_bf16": {
            "merge_method": "linear",
            "models": [model("m1", weight=0.3), model("m2", weight=0.7)],
            "dtype": "bfloat16",
        },
        "slerp": {
            "merge_method": "slerp",
            "base_model": base,
            "models": [model("base"), model("m1")],
            "parameters": {"t": 0.3},
            **f32,
        },
        "slerp_gradient_slices": gradient_slerp({k: Path(v) for k, v in m.items()}),
        "nuslerp": {
            "merge_method": "nuslerp",
            "base_model": base,
            "models": [model("m1", weight=0.4), model("m2", weight=0.6)],
            **f32,
        },
        "multislerp": {
            "merge_method": "multislerp",
            "base_model": base,
            "models": [model("m1", weight=0.5), model("m2", weight=0.3), model("m3", weight=0.2)],
            **f32,
        },
        "karcher": {
            "merge_method": "karcher",
            "base_model": base,
            "models": [model("m1"), model("m2")],
            **f32,
        },
        "model_stock": {
            "merge_method": "model_stock",
            "base_model": base,
            "models": [model("m1"), model("m2"), model("m3")],
            **f32,
        },
        "nearswap": {
            "merge_method": "nearswap",
            "base_model": base,
            "models": [model("m1")],
            "parameters": {"t": 0.01},
            **f32,
        },
        "ram": {
            "merge_method": "ram",
            "base_model": base,
            "models": [model("m1"), model("m2")],
            "parameters": {"epsilon": 0.01},
            **f32,
        },
        "ramplus_tl": {
            "merge_method": "ramplus_tl",
            "base_model": base,
            "models": [model("m1"), model("m2"), model("m3")],
            "parameters": {"epsilon": 0.01, "r": 0.5, "alpha": 0.3},
            **f32,
        },
        "tokenizer_source_base": {
            "merge_method": "task_arithmetic",
            "base_model": base,
            "models": [model("m1", weight=0.5), model("m2", weight=0.5)],
            "tokenizer_source": "base",
            **f32,
        },
    }


MERGEKIT_YAML = """
import sys
from mergekit.scripts.run_yaml import main  # the `mergekit-yaml` command

args = sys.argv[1:]
for config, out in zip(args[::2], args[1::2]):
    main([config, out], standalone_mode=False)
"""


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    pytest.importorskip("mergekit", reason="mergekit not installed (pip install .[oracle])")
    if shutil.which("mergekit-yaml") is None:
        pytest.skip("mergekit-yaml not on PATH")
    from conftest import WORDS
    from mergekit_ir.references.tiny_models import word_tokenizer

    root = tmp_path_factory.mktemp("recipe-oracle")
    tok = word_tokenizer(WORDS, bert_style=False)
    vocab = len(tok.get_vocab())
    base = write_llama(root / "base", 0, vocab=vocab)
    for i, name in enumerate(("m1", "m2", "m3"), 1):
        write_llama(root / name, i, base, vocab=vocab)
    for name in ("base", "m1", "m2", "m3"):
        tok.save_pretrained(str(root / name))
    from transformers import LlamaForCausalLM  # our hand-written checkpoints are real Llamas

    _, info = LlamaForCausalLM.from_pretrained(str(root / "m1"), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    models = {n: str(root / n) for n in ("base", "m1", "m2", "m3")}
    recipes = oracle_recipes(models)
    args = []
    for name, body in recipes.items():
        args += [str(write_recipe(root, body, f"{name}.yml")), str(root / f"mk-{name}")]
    # mergekit-yaml's own command, once per recipe in one process (its import costs seconds)
    res = subprocess.run(
        [sys.executable, "-c", MERGEKIT_YAML, *args], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", list(oracle_recipes({n: n for n in ("base", "m1", "m2", "m3")})))
def test_same_tensors_as_mergekit_yaml(oracle, name):
    path = oracle / f"{name}.yml"
    out = oracle / f"ours-{name}"
    write_recipe_merge(prepare_recipe_merge(path), out, progress=False)
    theirs, ours = tensors(oracle / f"mk-{name}"), tensors(out)
    assert ours.keys() == theirs.keys()
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype, k
        # fp32: fp32 tolerance; bf16 (linear computes in fp32 from bf16 inputs): bf16's
        torch.testing.assert_close(ours[k], theirs[k], msg=lambda m, k=k: f"{name} {k}: {m}")
    assert (
        json.loads((out / "config.json").read_text())["vocab_size"]
        == theirs["model.embed_tokens.weight"].shape[0]
    )


@pytest.mark.slow
def test_tokenizer_source_is_a_plain_copy(oracle):
    out = oracle / "ours-tokenizer_source_base"
    if not out.exists():
        write_recipe_merge(
            prepare_recipe_merge(oracle / "tokenizer_source_base.yml"), out, progress=False
        )
    from transformers import AutoTokenizer

    ours = AutoTokenizer.from_pretrained(str(out)).get_vocab()
    theirs = AutoTokenizer.from_pretrained(str(oracle / "mk-tokenizer_source_base")).get_vocab()
    assert ours == theirs


@pytest.mark.slow
def test_tokenizer_source_with_another_vocabulary_is_rejected(tmp_path, oracle):
    from mergekit_ir.references.tiny_models import word_tokenizer

    other = tmp_path / "other"
    shutil.copytree(oracle / "m2", other)
    for f in other.glob("tokenizer*"):
        f.unlink()
    word_tokenizer(["zebra", "quokka"] * 10, bert_style=False).save_pretrained(str(other))
    body = yaml.safe_load((oracle / "tokenizer_source_base.yml").read_text())
    body["models"][1]["model"] = str(other)
    with pytest.raises(ConfigError) as exc:
        prepare_recipe_merge(write_recipe(tmp_path, body))
    assert f"tokenizer_source: not a plain copy here ({other}'s vocabulary differs" in str(
        exc.value
    )


@pytest.mark.slow
def test_docs_example_runs(tmp_path, monkeypatch):
    """docs/merging.md's recipe and Python example, as written: Θ' = ΘT + w·τD, w by layer."""
    import re

    from mergekit_ir.references.checkpoints import resolve_checkpoint

    doc = (Path(__file__).resolve().parents[1] / "docs" / "merging.md").read_text()
    found = re.search(
        r"<!-- mergekit-recipe-example -->\n```yaml\n(.*?)```\n\n```python\n(.*?)```", doc, re.S
    )
    recipe, code = found.group(1), found.group(2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MERGEIR_CACHE", str(tmp_path / "cache"))
    Path("recipe.yml").write_text(recipe)
    exec(code, {})
    merged = tensors(Path("merged"))
    ir, pre, dom = (
        tensors(resolve_checkpoint(f"quickstart:{n}", cache_root=tmp_path / "cache"))
        for n in ("ir", "pretrained", "domain")
    )
    for layer, w in ((0, 0.3), (1, 0.5)):
        k = f"encoder.layer.{layer}.output.dense.weight"
        name = next(n for n in merged if n.endswith(k))
        want = ir[name] + w * (dom[name] - pre[name])
        assert torch.allclose(merged[name], want, rtol=1.3e-6, atol=1e-5), name


@pytest.mark.slow
def test_cli_mergekit_config_plans_writes_and_refuses_mixed_flags(tmp_path, monkeypatch):
    """`mergeir merge --mergekit-config` with docs/merging.md's recipe: --plan prints the
    mapping, --out writes Θ', and flags the recipe already answers are one line."""
    import re

    from click.testing import CliRunner

    from mergekit_ir.cli import main

    doc = (Path(__file__).resolve().parents[1] / "docs" / "merging.md").read_text()
    recipe = re.search(r"<!-- mergekit-recipe-example -->\n```yaml\n(.*?)```", doc, re.S)
    path = tmp_path / "recipe.yml"
    path.write_text(recipe.group(1))
    env = {"MERGEIR_CACHE": str(tmp_path / "cache")}
    planned = CliRunner().invoke(main, ["merge", "--mergekit-config", str(path), "--plan"], env=env)
    assert planned.exit_code == 0, planned.output
    assert "task_arithmetic" in planned.output
    wrote = CliRunner().invoke(
        main, ["merge", "--mergekit-config", str(path), "--out", str(tmp_path / "m"), "-q"], env=env
    )
    assert wrote.exit_code == 0, wrote.output
    assert any(p.suffix == ".safetensors" for p in (tmp_path / "m").iterdir())
    mixed = CliRunner().invoke(
        main,
        ["merge", "--mergekit-config", str(path), "--alpha", "0.5", "--out", str(tmp_path / "x")],
        env=env,
    )
    assert mixed.exit_code == 2 and "takes models, method and parameters from the recipe" in (
        mixed.output
    )
    assert not (tmp_path / "x").exists()
