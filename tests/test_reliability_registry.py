"""Hostile registries: every problem is one line naming the file or YAML path, never a hang."""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mergekit_ir.cli import main
from mergekit_ir.errors import ConfigError, MergeIRError
from mergekit_ir.experiments.registry import load_registry
from mergekit_ir.params import Param

TEMPLATE = {
    "datasets": {"toy": {"beir": "quickstart:toy", "test": "test", "dev": "dev"}},
    "triplets": {
        "tiny": {
            "scorer": {"kind": "bi-encoder", "pooling": "mean", "similarity": "cosine"},
            "pretrained": "quickstart:pretrained",
            "domain": "quickstart:domain",
            "ir": "quickstart:ir",
        }
    },
    "experiments": {
        "exp": {
            "triplets": ["tiny"],
            "datasets": ["toy"],
            "merge": {"method": "task_arithmetic", "alpha": [0.5, 1.0]},
            "first_stage": {"backend": "bm25s", "k": 100},
            "fusion": {"method": "wsum", "norm": "min-max", "weights": [0.5, 0.5]},
            "metrics": ["P@10", "NDCG@10"],
        }
    },
}


def write(tmp_path: Path, text: str | bytes) -> Path:
    p = tmp_path / "registry.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def validate(path: Path):
    return CliRunner().invoke(main, ["validate", str(path)], catch_exceptions=False)


def one_line_error(res, pattern: str) -> str:
    import re

    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def with_alpha(alpha) -> str:
    reg = copy.deepcopy(TEMPLATE)
    reg["experiments"]["exp"]["merge"]["alpha"] = alpha
    return yaml.safe_dump(reg)


def test_template_is_valid(tmp_path):
    assert "ok" in validate(write(tmp_path, yaml.safe_dump(TEMPLATE))).output


@pytest.mark.parametrize(
    ("alpha", "pattern"),
    [
        ("[.nan]", r"experiments\.exp\.merge\.alpha\[0\]: nan is not a finite number"),
        ("[0.5, .inf]", r"experiments\.exp\.merge\.alpha\[1\]: inf is not a finite number"),
        ("[-.inf]", r"alpha\[0\]: -inf is not a finite number"),
        ("[]", r"experiments\.exp\.merge\.alpha: the α grid is empty"),
        ("[~]", r"experiments\.exp\.merge\.alpha\[0\]: empty value"),
        ("{gradient: [0.1, .nan]}", r"alpha\[0\]\.gradient\[1\]: nan is not a finite number"),
    ],
)
def test_bad_alpha_grid(tmp_path, alpha, pattern):
    text = with_alpha("X").replace("- X", "").replace("alpha: X", f"alpha: {alpha}")
    text = text.replace("alpha:\n", f"alpha: {alpha}\n") if "alpha: " not in text else text
    one_line_error(validate(write(tmp_path, text)), pattern)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "nan", "-inf"])
def test_every_float_param_rejects_nonfinite(value):
    for p in (Param("x", float, 0.0), Param("x", float, 0.0, min=0.0, max=1.0)):
        with pytest.raises(ConfigError, match=r"^x: .* is not a finite number"):
            p.check(value, "x")


def test_alias_bomb_in_description_fails_fast(tmp_path):
    """The billion laughs: 10 levels of 10 aliases is 10^10 values (it used to hang validate)."""
    levels = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    bomb = "{" + ", ".join(levels) + "}"
    text = yaml.safe_dump(TEMPLATE).replace("  toy:\n", f"  toy:\n    description: {bomb}\n", 1)
    start = time.perf_counter()
    line = one_line_error(
        validate(write(tmp_path, text)),
        r"registry\.yaml:\d+: datasets\.toy\.description\.a\d: YAML aliases expand to more than",
    )
    assert time.perf_counter() - start < 5 and len(line) < 300


def test_alias_bomb_as_k_gives_a_short_error(tmp_path):
    levels = ["x0: &x0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, 4):
        levels.append(f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 10) + "]")
    reg = yaml.safe_dump(TEMPLATE).replace("k: 100", "k: *x3")
    text = "version: {" + ", ".join(levels) + "}\n" + reg
    line = one_line_error(validate(write(tmp_path, text)), r"first_stage\.k: expected a positive")
    assert len(line) < 300  # 10^4 values (under the expansion limit), echoed truncated
    levels.append("x4: &x4 [" + ", ".join(["*x3"] * 10) + "]")  # now 10^5 in k: over the limit
    text = "version: {" + ", ".join(levels) + "}\n" + reg.replace("k: *x3", "k: [*x4, *x4]")
    one_line_error(
        validate(write(tmp_path, text)),
        r"registry\.yaml:\d+: experiments\.exp\.first_stage\.k: YAML aliases expand to more than",
    )


def test_recursive_alias(tmp_path):
    text = yaml.safe_dump(TEMPLATE).replace("k: 100", "k: &r [*r]")
    one_line_error(validate(write(tmp_path, text)), r"registry\.yaml:\d+: .*recursive alias")


@pytest.mark.parametrize("section", ["datasets", "triplets", "experiments"])
@pytest.mark.parametrize("name", ["../../../escape_t", "a/b", ".hidden", "a b", "x" * 101, "c:\\x"])
def test_names_that_become_paths_are_checked(tmp_path, section, name):
    reg = copy.deepcopy(TEMPLATE)
    old = {"datasets": "toy", "triplets": "tiny", "experiments": "exp"}[section]
    reg[section][name] = reg[section].pop(old)
    for e in reg["experiments"].values():
        e["triplets"] = [name if t == old else t for t in e["triplets"]]
        e["datasets"] = [name if d == old else d for d in e["datasets"]]
    one_line_error(
        validate(write(tmp_path, yaml.safe_dump(reg))),
        rf"^error: {section}\..*: name .* is not allowed \(it becomes a file name\)",
    )


def test_nul_character(tmp_path):
    text = yaml.safe_dump(TEMPLATE).replace("quickstart:toy", "quick\x00start:toy")
    one_line_error(
        validate(write(tmp_path, text)), r"registry\.yaml:3: character U\+0000 is not allowed"
    )


def test_latin1_file(tmp_path):
    text = yaml.safe_dump(TEMPLATE).replace("exp:\n", "exp:\n    description: café\n")
    line = one_line_error(
        validate(write(tmp_path, text.encode("latin-1"))), r"registry\.yaml:\d+: byte 0xe9"
    )
    assert "save the file as UTF-8" in line


@pytest.mark.parametrize(
    "text", ["", "# only a comment\n", "\n\n", "version: 1\n", "datasets: {}\n"]
)
def test_empty_registry_is_not_ok(tmp_path, text):
    one_line_error(
        validate(write(tmp_path, text)), r"registry\.yaml: the registry (is empty|defines no)"
    )


@pytest.mark.parametrize("split", ["test[:abc]", "test[:0%]", "test[:150%]", "test[", "a]b"])
def test_bad_split_spec_caught_by_validate(tmp_path, split):
    reg = copy.deepcopy(TEMPLATE)
    reg["datasets"]["toy"]["dev"] = split
    one_line_error(validate(write(tmp_path, yaml.safe_dump(reg))), r"^error: datasets\.toy\.dev: ")


@pytest.mark.parametrize(
    ("section", "value", "pattern"),
    [
        ("fusion", {"weights": [math.nan, 1]}, r"fusion\.weights: give two numbers"),
        ("merge", {"weights": [1, 2]}, r"merge\.weights: 2 weight\(s\) given for 1 task vector"),
        (
            "merge",
            {"alpha": [{"filter": 1, "value": 1}]},
            r"alpha\[0\]\[0\]\.filter: expected a regex",
        ),
        ("first_stage", {"k1": math.nan}, r"first_stage\.k1: nan is not a finite number"),
        ("first_stage", ["bm25s"], r"exp\.first_stage: expected a mapping"),
        ("scoring", {"batch_size": 0}, r"scoring\.batch_size: 0 must be at least 1"),
        ("triplets", [{"x": "tiny"}], r"exp\.triplets\[0\]: expected a triplet name"),
    ],
)
def test_wrong_types_and_values(tmp_path, section, value, pattern):
    reg = copy.deepcopy(TEMPLATE)
    reg["experiments"]["exp"][section] = value
    one_line_error(validate(write(tmp_path, yaml.safe_dump(reg))), pattern)


def test_unhashable_key(tmp_path):
    text = yaml.safe_dump(TEMPLATE) + "? [a, b]\n: 1\n"
    one_line_error(validate(write(tmp_path, text)), r"registry\.yaml:\d+: ")


# -- fuzz: random mutations of a valid registry --------------------------------------------
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["bm25s", "wsum", "min-max", "tiny", "toy", "test[:abc]", "../x", "P@10"]),
)
VALUES = st.recursive(
    LEAVES,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3)
    ),
    max_leaves=8,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _set(root, path, value):
    node = root
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


@st.composite
def mutated_registry(draw) -> str:
    reg = copy.deepcopy(TEMPLATE)
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(reg) if p]
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "rename", "delete", "nest"]))
        parent = reg
        for p in path[:-1]:
            parent = parent[p]
        if action == "replace":
            _set(reg, path, draw(VALUES))
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = parent.pop(path[-1])
        elif action == "delete":
            del parent[path[-1]]
        else:
            _set(reg, path, [parent[path[-1]]] if draw(st.booleans()) else {"x": parent[path[-1]]})
    text = yaml.safe_dump(reg, allow_unicode=True)
    if draw(st.booleans()):  # text-level damage: aliases, stray bytes, truncation
        extra = draw(
            st.sampled_from(
                [
                    "\nz: &a [1, 2]\ny: [*a, *a]\n",
                    "\n\x00",
                    "\t- [",
                    "\nversion: !!python/object/apply:os.system [echo hacked]\n",
                    "\nexperiments: {e: {triplets: *nope}}\n",
                ]
            )
        )
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + extra + text[cut:]
    return text


@pytest.fixture(scope="module")
def warm_catalog():
    from mergekit_ir.plugin_host import catalog

    catalog()  # plugin discovery is a one-off cost, not the loader's


@settings(
    max_examples=200,
    deadline=None,  # timed below, after the warm-up, so a slow first call is not "flaky"
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=mutated_registry())
def test_fuzz_registry_loader(tmp_path, warm_catalog, text):
    """Only ok or one short line (a MergeIRError): no traceback, no hang."""
    path = write(tmp_path, text)
    start = time.perf_counter()
    try:
        load_registry(path)
    except MergeIRError as exc:
        msg = str(exc)
        assert "\n" not in msg and 0 < len(msg) < 500, msg
    assert time.perf_counter() - start < 2.0
