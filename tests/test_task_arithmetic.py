"""Task arithmetic against hand-computed tensors (Eq. 1-2 of the paper)."""

import pytest
import torch

from mergekit_ir.plugin_host import catalog


@pytest.fixture
def ta():
    return catalog().merge_method("task_arithmetic").merge


THETA_T = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
TAU = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [0.5, 0.5, 0.5]])
TAU2 = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])


def test_alpha_half(ta):
    expected = torch.tensor([[1.5, 2.0, 2.5], [5.0, 5.0, 5.0], [7.25, 8.25, 9.25]])
    assert torch.equal(ta(THETA_T, [TAU], alpha=0.5), expected)


def test_alpha_zero_returns_theta_t_exactly(ta):
    out = ta(THETA_T, [TAU], alpha=0.0)
    assert torch.equal(out, THETA_T) and out.data_ptr() != THETA_T.data_ptr()


def test_negative_alpha_subtracts(ta):
    expected = torch.tensor([[0.0, 2.0, 4.0], [2.0, 5.0, 8.0], [6.5, 7.5, 8.5]])
    assert torch.equal(ta(THETA_T, [TAU], alpha=-1.0), expected)


def test_weighted_sum_of_vectors(ta):
    # ΘT + 1.0 * (2*TAU + 0.5*TAU2)
    expected = torch.tensor([[3.0, 2.5, 1.0], [8.0, 5.0, 2.0], [8.5, 9.5, 10.5]])
    assert torch.equal(ta(THETA_T, [TAU, TAU2], alpha=1.0, weights=[2.0, 0.5]), expected)


def test_weight_count_mismatch(ta):
    with pytest.raises(ValueError, match="2 weights given for 1 task vectors"):
        ta(THETA_T, [TAU], alpha=1.0, weights=[1.0, 2.0], name="w")
