"""The GEMM cycle model: hand-derived cases per dataflow, and its required properties over random shapes.

Hand cases sum a fold's cycles over folds (see hw_models.dataflow), with K' = ceil(K / lanes): OS maps
rows <- M, T = K', fold = T + r + c - 2 (the drain overlaps the next fold); WS maps rows <- K', T = M,
fold = T + 2r + c - 2 (the weights shifted in first); columns <- N for both. With edge_folds "trim" r and
c are a fold's real rows and columns, with "full" (the spec's default) the whole array's.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw_models.dataflow import DATAFLOWS, EDGE_FOLDS, gemm_cycles, utilisation

OS, WS = DATAFLOWS


@pytest.mark.parametrize(
    ("m", "n", "k", "groups", "rows", "cols", "lanes", "expected"),
    [
        # One full fold r=4, c=4, T=K'=8: 8 + 4 + 4 - 2 = 14.
        (4, 4, 8, 1, 4, 4, 1, 14),
        # Edge folds: M=5 on R=4 -> r in {4, 1}; N=3 on C=2 -> c in {2, 1}; T=4.
        # (4,2): 4+4+2-2=8, (4,1): 4+4+1-2=7, (1,2): 4+1+2-2=5, (1,1): 4+1+1-2=4 -> 24.
        (5, 3, 4, 1, 4, 2, 1, 24),
        # groups=3, lanes=2: K'=ceil(5/2)=3, one fold r=2, c=2: 3+2+2-2=5 per group -> 15.
        (2, 2, 5, 3, 2, 2, 2, 15),
        # Array larger than the tile: r=2, c=3 (not R=8, C=8), T=1: 1+2+3-2=4.
        (2, 3, 1, 1, 8, 8, 1, 4),
    ],
)
def test_output_stationary_hand_cases(m, n, k, groups, rows, cols, lanes, expected):
    assert gemm_cycles(m, n, k, groups, rows, cols, lanes, OS, "trim") == expected


@pytest.mark.parametrize(
    ("m", "n", "k", "groups", "rows", "cols", "lanes", "expected"),
    [
        # One full fold r=K'=4, c=4, T=M=6: 6 + 8 + 4 - 2 = 16.
        (6, 4, 4, 1, 4, 4, 1, 16),
        # Edge folds: K'=6 on R=4 -> r in {4, 2}; N=5 on C=4 -> c in {4, 1}; T=M=3.
        # (4,4): 3+8+4-2=13, (4,1): 3+8+1-2=10, (2,4): 3+4+4-2=9, (2,1): 3+4+1-2=6 -> 38.
        (3, 5, 6, 1, 4, 4, 1, 38),
        # groups=2, lanes=2: K'=ceil(6/2)=3 on R=2 -> r in {2, 1}; c=2; T=4.
        # (2,2): 4+4+2-2=8, (1,2): 4+2+2-2=6 -> 14 per group -> 28.
        (4, 2, 6, 2, 2, 2, 2, 28),
    ],
)
def test_weight_stationary_hand_cases(m, n, k, groups, rows, cols, lanes, expected):
    assert gemm_cycles(m, n, k, groups, rows, cols, lanes, WS, "trim") == expected


@pytest.mark.parametrize("dataflow, load", [(OS, 1), (WS, 2)])
def test_full_edge_folds_charge_the_whole_array(dataflow, load):
    # M=5 on R=4, N=3 on C=2, K=4: 2 x 2 folds, each charged T + load*R + C - 2 whatever it uses.
    m, n, k, rows, cols = 5, 3, 4, 4, 2
    t, row_dim = (k, m) if dataflow == OS else (m, k)
    folds = -(-row_dim // rows) * -(-n // cols)
    assert gemm_cycles(m, n, k, 3, rows, cols, 1, dataflow, "full") == 3 * folds * (t + load * rows + cols - 2)
    assert gemm_cycles(m, n, k, 1, rows, cols, 1, dataflow, "full") > gemm_cycles(m, n, k, 1, rows, cols, 1, dataflow,
                                                                                   "trim")
    with pytest.raises(ValueError, match="edge_folds 'padded'.*trim.*full"):
        gemm_cycles(m, n, k, 1, rows, cols, 1, dataflow, "padded")


def test_utilisation_hand_case():
    # OS, M=N=2, K=4 on 2x2: one fold, 4+2+2-2=6 cycles; 16 MACs -> 16 / (6*2*2*1) = 2/3.
    assert utilisation(2, 2, 4, 1, 2, 2, 1, OS, "full") == pytest.approx(2 / 3)


def test_broadcasts_over_array_shapes():
    rows = np.array([[1], [2], [4], [8]])
    cols = np.array([1, 2, 4, 8, 16])
    for dataflow in DATAFLOWS:
        for edge_folds in EDGE_FOLDS:
            swept = gemm_cycles(197, 64, 192, 3, rows, cols, 1, dataflow, edge_folds)
            assert swept.shape == (4, 5) and swept.dtype == np.int64
            for i, r in enumerate(rows[:, 0]):
                for j, c in enumerate(cols):
                    assert swept[i, j] == gemm_cycles(197, 64, 192, 3, int(r), int(c), 1, dataflow, edge_folds)


def test_unknown_dataflow_names_it_and_the_choices():
    with pytest.raises(ValueError, match="row_stationary.*output_stationary.*weight_stationary"):
        gemm_cycles(1, 1, 1, 1, 1, 1, 1, "row_stationary", "full")


@pytest.mark.parametrize("position", range(7))
@pytest.mark.parametrize("bad", [0, -3, np.array([4, 0])])
def test_non_positive_sizes_rejected(position, bad):
    args = [4] * 7
    args[position] = bad
    with pytest.raises(ValueError, match="positive"):
        gemm_cycles(*args, OS, "full")


def test_non_integer_sizes_rejected():
    with pytest.raises(ValueError, match="integer"):
        gemm_cycles(4.0, 4, 4, 1, 4, 4, 1, OS, "full")


size = st.integers(1, 300)
small = st.integers(1, 4)
grow = st.integers(1, 40)
dataflow = st.sampled_from(DATAFLOWS)
edge = st.sampled_from(EDGE_FOLDS)


@settings(max_examples=300, deadline=None)
@given(m=size, n=size, k=size, groups=small, rows=size, cols=size, lanes=small, extra=grow, df=dataflow)
def test_bigger_array_never_adds_cycles_with_trimmed_edge_folds(m, n, k, groups, rows, cols, lanes, extra, df):
    base = gemm_cycles(m, n, k, groups, rows, cols, lanes, df, "trim")
    assert gemm_cycles(m, n, k, groups, rows + extra, cols, lanes, df, "trim") <= base
    assert gemm_cycles(m, n, k, groups, rows, cols + extra, lanes, df, "trim") <= base


@settings(max_examples=300, deadline=None)
@given(m=size, n=size, k=size, groups=small, rows=size, cols=size, lanes=small, df=dataflow)
def test_full_edge_folds_never_cost_less_than_trimmed_and_equal_them_on_whole_folds(m, n, k, groups, rows, cols,
                                                                                   lanes, df):
    full, trim = (gemm_cycles(m, n, k, groups, rows, cols, lanes, df, e) for e in ("full", "trim"))
    assert full >= trim
    # tile the array exactly (rows and columns multiples of the array): no edge fold, the two agree
    inner = rows * lanes * k if df == WS else k * lanes
    m_whole = m if df == WS else rows * m
    assert gemm_cycles(m_whole, cols * n, inner, groups, rows, cols, lanes, df, "full") == gemm_cycles(
        m_whole, cols * n, inner, groups, rows, cols, lanes, df, "trim")


@settings(max_examples=300, deadline=None)
@given(m=size, n=size, k=size, groups=small, rows=size, cols=size, lanes=small, extra=small, df=dataflow, e=edge)
def test_more_lanes_never_add_cycles(m, n, k, groups, rows, cols, lanes, extra, df, e):
    assert gemm_cycles(m, n, k, groups, rows, cols, lanes + extra, df, e) <= gemm_cycles(
        m, n, k, groups, rows, cols, lanes, df, e
    )


@settings(max_examples=300, deadline=None)
@given(m=size, n=size, k=size, groups=small, rows=size, cols=size, lanes=small, df=dataflow, e=edge)
def test_no_faster_than_peak_and_utilisation_in_unit_interval(m, n, k, groups, rows, cols, lanes, df, e):
    cycles = gemm_cycles(m, n, k, groups, rows, cols, lanes, df, e)
    assert cycles.dtype == np.int64
    # Integer form of cycles >= MACs / (R * C * lanes): exact, no float rounding.
    assert int(cycles) * rows * cols * lanes >= groups * m * n * k
    util = utilisation(m, n, k, groups, rows, cols, lanes, df, e)
    assert 0 < util <= 1


@settings(max_examples=50, deadline=None)
@given(m=size, n=size, k=size, groups=small, lanes=small, df=dataflow)
def test_monotone_along_a_vectorised_sweep_with_trimmed_edge_folds(m, n, k, groups, lanes, df):
    # The same property as one broadcast call: cycles never rise along either array axis.
    dims = np.arange(1, 65)
    swept = gemm_cycles(m, n, k, groups, dims[:, None], dims[None, :], lanes, df, "trim")
    assert np.all(np.diff(swept, axis=0) <= 0) and np.all(np.diff(swept, axis=1) <= 0)
