import pytest

from mergekit_ir.errors import ConfigError
from mergekit_ir.params import Param, TensorPosition, check_params, layer_index, resolve

ALPHA = Param("alpha", float, 1.0, min=-2.0, max=2.0, per_tensor=True)


def test_scalar_range_error_names_path():
    with pytest.raises(ConfigError, match=r"^x\.alpha: 2\.5 is outside \[-2, 2\]$"):
        check_params([ALPHA], {"alpha": 2.5}, "x", "m")


def test_unknown_and_wrong_type():
    with pytest.raises(ConfigError, match=r"x\.beta: unknown parameter for m \(it takes: alpha\)"):
        check_params([ALPHA], {"beta": 1}, "x", "m")
    with pytest.raises(ConfigError, match=r"x\.alpha: 'high' is not a float"):
        check_params([ALPHA], {"alpha": "high"}, "x", "m")


def test_defaults_filled_and_int_coerced():
    assert check_params([ALPHA], {}, "x", "m") == {"alpha": 1.0}
    assert check_params([ALPHA], {"alpha": 1}, "x", "m") == {"alpha": 1.0}


def test_gradient_interpolates_across_layers():
    v = ALPHA.check({"gradient": [0.0, 1.0]}, "a")
    assert resolve(v, TensorPosition("encoder.layer.0.q.weight", 0, 5)) == 0.0
    assert resolve(v, TensorPosition("encoder.layer.2.q.weight", 2, 5)) == pytest.approx(0.5)
    assert resolve(v, TensorPosition("encoder.layer.4.q.weight", 4, 5)) == 1.0
    assert resolve(v, TensorPosition("embeddings.word_embeddings.weight", None, 5)) == 0.0
    three = ALPHA.check({"gradient": [0.0, 1.0, 0.0]}, "a")
    assert resolve(three, TensorPosition("layers.2.w", 2, 5)) == pytest.approx(1.0)
    assert resolve(three, TensorPosition("layers.1.w", 1, 5)) == pytest.approx(0.5)


def test_filter_rules_first_match_wins():
    v = ALPHA.check(
        [
            {"filter": r"attention", "value": 0.2},
            {"filter": r"layer\.1\.", "value": 0.7},
            {"value": 1.0},
        ],
        "a",
    )
    assert resolve(v, TensorPosition("encoder.layer.1.attention.q.weight")) == 0.2
    assert resolve(v, TensorPosition("encoder.layer.1.output.dense.weight")) == 0.7
    assert resolve(v, TensorPosition("embeddings.word_embeddings.weight")) == 1.0


def test_layerwise_errors():
    with pytest.raises(ConfigError, match=r"a\[0\]\.value: 3 is outside"):
        ALPHA.check([{"filter": "x", "value": 3.0}], "a")
    with pytest.raises(ConfigError, match=r"a\[0\]\.filter: bad regex"):
        ALPHA.check([{"filter": "(", "value": 1.0}], "a")
    with pytest.raises(ConfigError, match="takes one value"):
        Param("k", int, 1).check({"gradient": [1, 2]}, "a")


def test_layer_index():
    assert layer_index("bert.encoder.layer.11.attention.self.query.weight") == 11
    assert layer_index("model.layers.3.mlp.up_proj.weight") == 3
    assert layer_index("encoder.block.1.layer.0.SelfAttention.q.weight") == 1
    assert layer_index("embeddings.word_embeddings.weight") is None
