"""Streaming summaries (Summarizer, ClassSummarizer, the Stat family).

Values are checked against the textbook batch formulas (torch.mean/var/std over the stacked
stream) and against Captum's summarizer as a test-only oracle, from one table of stat sets.
"""
import pytest
import torch

import explain_serve.attr as esa
from explain_serve.attr import (
    MSE,
    ClassSummarizer,
    CommonStats,
    Count,
    Max,
    Mean,
    Min,
    StdDev,
    Sum,
    Summarizer,
    SummarizerSingleTensor,
    Var,
)

ca = pytest.importorskip("captum.attr")

STAT_SETS = {
    "common": lambda m: m.CommonStats(),
    "mean": lambda m: [m.Mean()],
    "var0_std0": lambda m: [m.Var(), m.StdDev()],
    "std2_only": lambda m: [m.StdDev(order=2)],
    "mse_count_sum": lambda m: [m.MSE(), m.Count(), m.Sum()],
    "dupes_named": lambda m: [m.Mean(), m.Mean(), m.Min(name="lowest"), m.Max()],
}


def _stream(n=7, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(4, 3, generator=g, dtype=dtype) * 5 + i for i in range(n)]


def _assert_summary_equal(ours, theirs):
    if isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            _assert_summary_equal(a, b)
        return
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        if isinstance(v, torch.Tensor):
            assert ours[k].dtype == v.dtype, k
            torch.testing.assert_close(ours[k], v, rtol=1e-12, atol=1e-12)
        else:
            assert ours[k] == v, k


@pytest.mark.parametrize("name", sorted(STAT_SETS))
@pytest.mark.parametrize("as_tuple", [False, True])
def test_summary_equals_captum(name, as_tuple):
    import captum.attr as capt

    ours, theirs = Summarizer(STAT_SETS[name](esa)), capt.Summarizer(STAT_SETS[name](capt))
    assert ours.summary is None
    for x in _stream():
        item = (x, x[:, :1] * 2) if as_tuple else x
        ours.update(item)
        theirs.update(item)
        _assert_summary_equal(ours.summary, theirs.summary)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_textbook_values(order):
    xs = _stream(9)
    stacked = torch.stack(xs)
    s = Summarizer([Mean(), Var(order=order), StdDev(order=order), Min(), Max(), Sum(), Count(), MSE()])
    for x in xs:
        s.update(x)
    got = s.summary
    var = ((stacked - stacked.mean(0)) ** 2).sum(0) / (len(xs) - order)
    torch.testing.assert_close(got["mean"], stacked.mean(0))
    torch.testing.assert_close(got[Var(order=order).name], var)
    torch.testing.assert_close(got[StdDev(order=order).name], var.sqrt())
    torch.testing.assert_close(got["mse"], ((stacked - stacked.mean(0)) ** 2).sum(0))
    torch.testing.assert_close(got["min"], stacked.min(0).values)
    torch.testing.assert_close(got["max"], stacked.max(0).values)
    torch.testing.assert_close(got["sum"], stacked.sum(0))
    assert got["count"] == len(xs)


def test_integer_and_float_inputs():
    s = Summarizer([Mean(), Var(), Min()])
    for v in (1, 2, 6):
        s.update(torch.tensor([v, -v]))
    assert s.summary["mean"].dtype == torch.float64  # integer input averaged in float64 (as Captum)
    torch.testing.assert_close(s.summary["mean"], torch.tensor([3.0, -3.0], dtype=torch.float64))
    torch.testing.assert_close(s.summary["variance"], torch.tensor([14 / 3, 14 / 3], dtype=torch.float64))
    f = Summarizer([Mean(), Count()])
    f.update(2.0)
    f.update(4.0)
    assert f.summary["count"] == 2 and float(f.summary["mean"]) == 3.0


def test_first_update_is_copied():
    x = torch.ones(3)
    s = Summarizer([Min(), Max(), Mean()])
    s.update(x)
    x.mul_(10)  # the caller reuses its buffer
    assert s.summary["min"].tolist() == [1.0, 1.0, 1.0] and s.summary["mean"].tolist() == [1.0, 1.0, 1.0]


def test_mixing_tensor_and_tuple_is_an_assertion_and_value_error():
    s = Summarizer([Mean()])
    s.update(torch.ones(2))
    with pytest.raises(AssertionError, match="same form"):
        s.update((torch.ones(2),))
    with pytest.raises(ValueError, match="same form"):
        s.update((torch.ones(2),))


def test_single_tensor_summarizer_shares_dependencies():
    stats = [Count(), Mean(), MSE(), Var(order=1)]
    single = SummarizerSingleTensor(stats, summary_stats_indices=[3])
    for x in _stream(4):
        single.update(x)
    assert single.get(Mean()) is stats[1] and single.get(Max()) is None
    assert list(single.summary) == ["sample_variance"]
    torch.testing.assert_close(single.summary["sample_variance"], torch.stack(_stream(4)).var(0))


def test_common_stats_names():
    assert [s.name for s in CommonStats()] == ["mean", "sample_variance", "sample_std_dev", "min", "max"]
    assert Mean() == Mean() and Var(order=1) != Var() and len({StdDev(), StdDev(), StdDev(order=1)}) == 2


LABEL_CASES = {
    "list": lambda n: [i % 3 for i in range(n)],
    "one_label": lambda n: 5,
    "one_label_list": lambda n: ["a"],
}


@pytest.mark.parametrize("case", sorted(LABEL_CASES))
def test_class_summarizer_equals_captum(case):
    import captum.attr as capt

    ours, theirs = ClassSummarizer(CommonStats()), capt.ClassSummarizer(capt.CommonStats())
    for x in _stream(3):
        labels = LABEL_CASES[case](x.shape[0])
        ours.update(x, labels)
        theirs.update(x, labels)
    _assert_summary_equal(ours.summary, theirs.summary)
    assert set(ours.class_summaries) == set(theirs.class_summaries)
    for k in theirs.class_summaries:
        _assert_summary_equal(ours.class_summaries[k], theirs.class_summaries[k])


def test_class_summarizer_tensor_labels_group_by_value():
    xs = torch.arange(12.0).reshape(6, 2)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    s = ClassSummarizer([Mean(), Count()])
    s.update(xs, labels)
    assert set(s.class_summaries) == {0, 1}  # Captum keys tensor labels by identity: 6 "classes"
    torch.testing.assert_close(s.class_summaries[0][0]["mean"], xs[labels == 0].mean(0))
    assert s.class_summaries[1][0]["count"] == 3 and s.summary[0]["count"] == 6


def test_class_summarizer_label_count_mismatch():
    s = ClassSummarizer([Mean()])
    with pytest.raises(AssertionError, match="number of labels"):
        s.update(torch.ones(4, 2), [0, 1, 2])
