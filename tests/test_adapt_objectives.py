"""Objective choice and T5 span corruption, against hand-worked examples."""

from __future__ import annotations

import random

import pytest
from transformers import BertConfig, LlamaConfig, T5Config

from mergekit_ir.adaptation.objectives import (
    apply_spans,
    choose_objective,
    noise_mask,
    span_corruption,
)
from mergekit_ir.errors import ConfigError


def test_auto_objective_follows_the_architecture():
    assert choose_objective(BertConfig(), "auto", "x") == "mlm"
    assert choose_objective(T5Config(), "auto", "x") == "span"
    assert choose_objective(LlamaConfig(architectures=["LlamaForCausalLM"]), "auto", "x") == "clm"


def test_an_objective_that_does_not_fit_is_one_line():
    with pytest.raises(ConfigError, match="objective 'span' does not fit a bert checkpoint"):
        choose_objective(BertConfig(), "span", "--objective")
    with pytest.raises(ConfigError, match="use one of"):
        choose_objective(BertConfig(), "nsp", "--objective")


def test_apply_spans_by_hand():
    # tokens 10..19, noise at 2,3 and 7: two spans -> sentinels 100, 99
    mask = [False, False, True, True, False, False, False, True, False, False]
    inputs, targets = apply_spans(list(range(10, 20)), mask, [100, 99, 98], eos=1)
    assert inputs == [10, 11, 100, 14, 15, 16, 99, 18, 19, 1]
    assert targets == [100, 12, 13, 99, 17, 1]


def test_apply_spans_noise_at_the_end_and_too_few_sentinels():
    inputs, targets = apply_spans([5, 6, 7], [False, True, True], [100], eos=1)
    assert (inputs, targets) == ([5, 100, 1], [100, 6, 7, 1])
    with pytest.raises(ValueError, match="sentinel"):
        apply_spans([5, 6, 7], [True, False, True], [100], eos=1)


def test_noise_mask_counts_match_density_and_mean_span():
    # 100 tokens, density .15 -> 15 noise tokens, mean span 3 -> 5 spans, starting with non-noise
    for seed in range(5):
        mask = noise_mask(100, random.Random(seed))
        assert sum(mask) == 15 and not mask[0]
        starts = sum(1 for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1]))
        assert starts == 5
    # 20 tokens: 3 noise tokens in round(3/3) = 1 span
    mask = noise_mask(20, random.Random(0))
    assert sum(mask) == 3 and "".join("x" if m else "." for m in mask).count("xxx") == 1


def test_span_corruption_round_trips():
    tokens = list(range(10, 60))
    inputs, targets = span_corruption(tokens, [200 - i for i in range(10)], 1, random.Random(3))
    # Filling each sentinel in the inputs with its target span gives the tokens back.
    spans, cur = {}, None
    for t in targets[:-1]:
        if t > 150:
            cur = t
            spans[cur] = []
        else:
            spans[cur].append(t)
    rebuilt = [x for t in inputs[:-1] for x in (spans[t] if t > 150 else [t])]
    assert rebuilt == tokens and len(targets) - 1 - len(spans) == round(50 * 0.15)
