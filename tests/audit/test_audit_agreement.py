"""The agreement metrics against scipy (an independent implementation) and hand-derived values."""
import numpy as np
import pytest
from scipy import stats

from explain_serve.audit import agreement as ag

rng = np.random.default_rng(0)
CASES = {
    "random": (rng.normal(size=50), rng.normal(size=50)),
    "correlated": (lambda x: (x, x + 0.3 * rng.normal(size=200)))(rng.normal(size=200)),
    "ties": (rng.integers(0, 4, size=60).astype(float), rng.integers(0, 3, size=60).astype(float)),
    "zeros_and_ties": (np.r_[np.zeros(20), rng.normal(size=30)], np.r_[np.zeros(25), rng.normal(size=25)]),
    "reversed": (np.arange(30.0), -np.arange(30.0)),
    "large": (rng.normal(size=5000), rng.normal(size=5000)),
    "two": (np.array([1.0, 2.0]), np.array([3.0, 1.0])),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rank_correlations_equal_scipy(name):
    a, b = CASES[name]
    assert ag.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-9)
    assert ag.kendall(a, b) == pytest.approx(stats.kendalltau(a, b).statistic, abs=1e-9)
    assert ag.cosine(a, b) == pytest.approx(1 - __import__("scipy").spatial.distance.cosine(a, b), abs=1e-9)


def test_identical_vectors_agree_fully():
    a = rng.normal(size=40)
    got = ag.agreement(a, a.copy(), k=5)
    assert got == {m: pytest.approx(1.0, abs=1e-12) for m in ag.PER_EXAMPLE}


def test_constant_vectors_are_undefined_not_invented():
    got = ag.agreement(np.ones(5), np.arange(5.0), k=2)
    assert np.isnan(got["spearman"]) and np.isnan(got["kendall"])
    assert np.isnan(ag.cosine(np.zeros(3), np.ones(3)))


def test_top_k_and_sign_hand_derived():
    a = np.array([5.0, -4.0, 3.0, 0.1, 0.0])
    b = np.array([-5.0, 0.2, 3.0, 4.0, 0.0])
    # top-2 by |.|: A {0, 1}, B {0, 3}: 1 shared of 3
    assert ag.top_k_jaccard(a, b, 2) == pytest.approx(1 / 3)
    # A's top-3 {0, 1, 2}: signs (+,-), (-,+), (+,+) -> 1 of 3 agree
    assert ag.sign_agreement(a, b, 3) == pytest.approx(1 / 3)
    assert ag.top_k_jaccard(a, b, 100) == 1.0  # k past the length: every entry


def test_ndcg_hand_derived():
    gains = np.array([3.0, 2.0, 1.0, 0.0])
    assert ag.ndcg_at_k(gains, gains * 7, 3) == pytest.approx(1.0)
    # B ranks features 2, 1, 3: gains 1, 2, 0 -> DCG = 1/1 + 2/log2(3) + 0/2; ideal = 3/1 + 2/log2(3) + 1/2
    expected = (1 + 2 / np.log2(3)) / (3 + 2 / np.log2(3) + 1 / 2)
    assert ag.ndcg_at_k(gains, np.array([0.0, 1.0, 2.0, 0.5]), 3) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="non-negative"):
        ag.ndcg_at_k(-gains, gains, 2)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="5 and 4 entries"):
        ag.agreement(np.ones(5), np.ones(4), 2)
