"""explain_serve.visualization: normalization by hand, PNG bytes that decode, each method and sign,
pyplot left untouched by the server path, and the word-importance HTML."""
from __future__ import annotations

import io
import subprocess
import sys
import threading

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from matplotlib.image import imread  # noqa: E402

from explain_serve import visualization as V  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMALL = dict(fig_size=(2, 2), dpi=40)  # 80 x 80 pixels


def decode(png: bytes) -> np.ndarray:
    assert png[:8] == PNG_SIGNATURE
    return imread(io.BytesIO(png), format="png")


def structured_attr(h: int = 12, w: int = 10, c: int = 3) -> np.ndarray:
    """Positive blob on the left, negative blob on the right, spread over channels."""
    a = np.zeros((h, w, c))
    a[2:6, 1:4, :] = 1.0
    a[6:10, 6:9, :] = -2.0
    a[0, 0, 0] = 0.5
    return a


def original(h: int = 12, w: int = 10) -> np.ndarray:
    rng = np.random.RandomState(0)
    return rng.rand(h, w, 3)


# --------------------------------------------------------------------------------------------
# normalization

A2 = np.array([[1.0, 2.0], [3.0, -4.0]])


@pytest.mark.parametrize(
    "sign, outlier_perc, expected",
    [
        # positive values (1, 2, 3, 0); ascending cumulative sums 0, 1, 3, 6 reach 50% of 6 at value 2
        ("positive", 50, [[0.5, 1.0], [1.0, 0.0]]),
        # no clipping: the scale is the largest value
        ("positive", 0, [[1 / 3, 2 / 3], [1.0, 0.0]]),
        # |a| = 1, 2, 3, 4: cumulative 1, 3, 6, 10 reach 50% at value 3
        ("absolute_value", 50, [[1 / 3, 2 / 3], [1.0, 1.0]]),
        # default outlier_perc=2: 98% of 10 is reached only at the last value 4
        ("absolute_value", 2, [[0.25, 0.5], [0.75, 1.0]]),
        # signs kept, scaled by the largest |a|
        ("all", 0, [[0.25, 0.5], [0.75, -1.0]]),
        # only -4 is negative: it maps to +1
        ("negative", 2, [[0.0, 0.0], [0.0, 1.0]]),
    ],
)
def test_normalize_attr_hand_derived(sign, outlier_perc, expected):
    np.testing.assert_allclose(V.normalize_attr(A2, sign, outlier_perc), expected, atol=1e-12)


def test_normalize_attr_sums_channels_and_handles_empty_sign():
    a = np.stack([A2, A2, -A2 / 2], axis=2)  # channel sum = 1.5 * A2
    np.testing.assert_allclose(V.normalize_attr(a, "all", 0), V.normalize_attr(A2, "all", 0))
    np.testing.assert_array_equal(V.normalize_attr(np.abs(A2), "negative"), np.zeros((2, 2)))
    np.testing.assert_array_equal(V.normalize_attr(np.zeros((3, 3)), "absolute_value"), np.zeros((3, 3)))
    with pytest.raises(ValueError):
        V.normalize_attr(A2, "both")


def test_normalize_attr_without_clipping_scales_by_the_maximum():
    """outlier_perc=0 must pick the largest value even when the cumulative sum rounds low."""
    rng = np.random.RandomState(1)
    a = np.maximum(rng.randn(9, 7) * rng.rand(9, 7) ** 3, 0)
    np.testing.assert_allclose(V.normalize_attr(a, "positive", 0), a / a.max(), atol=1e-12)


def test_normalize_attr_matches_captum():
    viz = pytest.importorskip("captum.attr._utils.visualization")
    rng = np.random.RandomState(1)
    a = rng.randn(9, 7) * rng.rand(9, 7) ** 3
    for sign in V.SIGNS:
        for perc in (2, 10, 37.5, 60):
            np.testing.assert_allclose(V.normalize_attr(a, sign, perc), viz._normalize_attr(a, sign, perc), atol=1e-12)


# --------------------------------------------------------------------------------------------
# PNG rendering

COMBINATIONS = [
    (m, s) for m in V.METHODS for s in V.SIGNS if not (m in ("masked_image", "alpha_scaling") and s == "all")
]


@pytest.mark.parametrize("method, sign", COMBINATIONS)
def test_every_method_and_sign_renders(method, sign):
    img = original()
    attr = structured_attr()
    if sign == "negative":
        attr = -attr  # larger negative region, so the negative map has content too
    blank = decode(V.save_image_attr_png(np.zeros_like(attr), original_image=img, method=method, sign=sign, **SMALL))
    drawn = decode(V.save_image_attr_png(attr, original_image=img, method=method, sign=sign, **SMALL))
    assert drawn.shape == blank.shape == (80, 80, 4)
    if method == "original_image":
        np.testing.assert_array_equal(drawn, blank)  # the attribution is not drawn at all
    else:
        assert np.abs(drawn - blank).max() > 0.1


def test_png_written_to_path_and_buffer(tmp_path):
    attr = structured_attr()
    data = V.save_image_attr_png(attr, tmp_path / "map.png", sign="all", **SMALL)
    assert (tmp_path / "map.png").read_bytes() == data
    buffer = io.BytesIO()
    assert V.save_image_attr_png(attr, buffer, sign="all", **SMALL) == data
    assert buffer.getvalue() == data
    assert decode(V.save_image_attr_png(attr, fig_size=(3, 1.5), dpi=20)).shape == (30, 60, 4)


def test_png_extras_grey_images_and_tensor_input():
    torch = pytest.importorskip("torch")
    attr = structured_attr(c=1)
    grey = original()[:, :, :1]
    for method in ("blended_heat_map", "masked_image", "alpha_scaling", "original_image"):
        assert decode(V.save_image_attr_png(attr, original_image=grey, method=method, **SMALL)).shape == (80, 80, 4)
    with_bar = V.save_image_attr_png(torch.from_numpy(attr), show_colorbar=True, title="t", **SMALL)
    assert decode(with_bar).shape == (80, 80, 4)


def test_png_is_the_same_from_many_threads_and_leaves_pyplot_alone():
    import matplotlib.pyplot as plt

    attr, img = structured_attr(), original()
    expected = V.save_image_attr_png(attr, original_image=img, method="blended_heat_map", sign="all", **SMALL)
    figures_before = plt.get_fignums()
    results, errors = [], []

    def work():
        try:
            for _ in range(3):
                results.append(
                    V.save_image_attr_png(attr, original_image=img, method="blended_heat_map", sign="all", **SMALL)
                )
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 12 and all(r == expected for r in results)
    assert plt.get_fignums() == figures_before


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(method="masked_image", sign="all"), "sign"),
        (dict(method="alpha_scaling", sign="all"), "sign"),
        (dict(method="blended_heat_map", no_image=True), "original_image"),
        (dict(method="sketch"), "method"),
        (dict(sign="both"), "sign"),
    ],
)
def test_invalid_combinations_raise(kwargs, error):
    image = None if kwargs.pop("no_image", False) else original()
    with pytest.raises(ValueError, match=error):
        V.save_image_attr_png(structured_attr(), original_image=image, **kwargs, **SMALL)


# --------------------------------------------------------------------------------------------
# the Captum-shaped figure functions


def test_visualize_image_attr_returns_figure_and_axis():
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    fig, ax = V.visualize_image_attr(structured_attr(), original(), "blended_heat_map", "all", use_pyplot=False,
                                     show_colorbar=True, title="IG")
    assert isinstance(fig, Figure) and isinstance(ax, Axes)
    assert ax.get_title() == "IG"
    assert len(fig.axes) == 2  # the image and its color bar

    fig2, ax2 = V.visualize_image_attr(structured_attr(), plt_fig_axis=(fig, ax), use_pyplot=False)
    assert fig2 is fig and ax2 is ax


def test_visualize_image_attr_with_pyplot_on_agg():
    import matplotlib.pyplot as plt

    fig, ax = V.visualize_image_attr(structured_attr(), sign="positive")
    try:
        assert fig.number in plt.get_fignums()
    finally:
        plt.close(fig)


def test_visualize_image_attr_multiple():
    fig, axes = V.visualize_image_attr_multiple(
        structured_attr(), original(), ["original_image", "heat_map", "masked_image"], ["all", "all", "positive"],
        titles=["a", "b", "c"], use_pyplot=False, show_colorbar=True,
    )
    assert [ax.get_title() for ax in axes] == ["a", "b", "c"]
    fig, ax = V.visualize_image_attr_multiple(structured_attr(), None, ["heat_map"], ["all"], use_pyplot=False)
    assert ax.get_title() == ""
    with pytest.raises(ValueError):
        V.visualize_image_attr_multiple(structured_attr(), None, ["heat_map"], ["all", "positive"], use_pyplot=False)


def test_import_is_light():
    code = (
        "import sys, explain_serve, explain_serve.visualization as v;"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly';"
        "v.visualize_text([]); v.format_word_importances(['a'], [0.1]);"
        "assert 'matplotlib' not in sys.modules and 'IPython' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------
# text


@pytest.mark.parametrize(
    "score, color",
    [
        (0.5, "hsl(120, 75%, 75%)"),
        (1.0, "hsl(120, 75%, 50%)"),
        (3.0, "hsl(120, 75%, 50%)"),  # clipped to 1
        (-0.5, "hsl(0, 75%, 80%)"),
        (-1.0, "hsl(0, 75%, 60%)"),
        (0.0, "hsl(0, 75%, 100%)"),
    ],
)
def test_format_word_importances_colors(score, color):
    cell = V.format_word_importances(["word"], [score])
    assert cell.startswith("<td>") and cell.endswith("</td>")
    assert color in cell and "word" in cell


def test_visualize_text_html():
    torch = pytest.importorskip("torch")
    records = [
        V.VisualizationDataRecord(torch.tensor([0.8, -0.6, 0.0]), 0.93, "pos", "pos", "pos", 1.234,
                                  ["great", "<s>", "a&b"], 0.01),
        V.VisualizationDataRecord(np.array([-0.2, 0.4]), 0.4, 0, 1, 0, -0.5, ["bad", "movie"], None),
    ]
    page = V.visualize_text(records)
    assert isinstance(page, str)
    for word in ("great", "#s", "a&amp;b", "bad", "movie"):
        assert f" {word} " in page
    assert "<s>" not in page and "a&b" not in page  # escaped, safe to serve
    assert "hsl(120, 75%, 60%)" in page  # great, +0.8
    assert "hsl(0, 75%, 76%)" in page  # <s>, -0.6
    assert "pos (0.93)" in page and "1.23" in page and "-0.50" in page
    assert page.count("<tr>") == 3 and "Legend" in page
    assert "Legend" not in V.visualize_text(records, legend=False)
    with pytest.raises(ValueError):
        V.format_word_importances(["a", "b"], [0.1])
    assert V.format_word_importances(["a"], []) == "<td></td>"
