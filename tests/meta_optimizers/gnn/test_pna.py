"""PNA's own pieces: the degree histogram of its scalers, equivariance at the reference size."""

from __future__ import annotations

import pytest

from lightning_l2o import PNAMetaOptimizer
from lightning_l2o.meta_optimizers.gnn import degree_histogram
from tests.meta_optimizers.gnn.test_base import EQUIVARIANCE_CASES, permutation_error


def test_degree_histogram_counts_fan_in_with_reverse_edges():
    # layout [1, 16, 32, 32, 10]: input 16, hidden 1+32, 16+32, 32+10, output 32
    hist = degree_histogram([1, 16, 32, 32, 10])
    assert hist[16] == 1 and hist[33] == 16 and hist[48] == 32 and hist[42] == 32 and hist[32] == 10
    assert int(hist.sum()) == 91


@pytest.mark.parametrize(("make_model", "pairs"), EQUIVARIANCE_CASES)
def test_the_reference_size_pna_is_equivariant(make_model, pairs):
    assert permutation_error(PNAMetaOptimizer(), make_model(), pairs) < 1e-5
