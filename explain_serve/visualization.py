"""Pictures of attributions: image heat maps (matplotlib) and word-importance HTML.

Mirrors ``captum.attr.visualization`` (``visualize_image_attr``, ``visualize_image_attr_multiple``,
``VisualizationDataRecord``, ``visualize_text``, ``format_word_importances``) and adds
``save_image_attr_png`` for servers: it draws on a ``matplotlib.figure.Figure`` with an Agg canvas,
never touching pyplot's global state, so it is thread-safe and leaves no figure behind.

matplotlib is imported only when an image function is called, so ``import explain_serve`` stays
light. Images are HWC arrays (numpy, or tensors, which are converted).

Normalization (as in Captum): keep the chosen sign of the channel-summed attribution, find the
smallest value whose cumulative sum (values sorted ascending, absolute values) reaches
``100 - outlier_perc`` percent of the total, divide by it and clip to [-1, 1], so the top
``outlier_perc`` percent of the attribution mass saturates instead of washing out the rest.
"""
from __future__ import annotations

import html
import io
import os
import sys
import warnings
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "METHODS",
    "SIGNS",
    "normalize_attr",
    "visualize_image_attr",
    "visualize_image_attr_multiple",
    "save_image_attr_png",
    "VisualizationDataRecord",
    "format_word_importances",
    "visualize_text",
]

METHODS = ("heat_map", "blended_heat_map", "original_image", "masked_image", "alpha_scaling")
SIGNS = ("positive", "negative", "absolute_value", "all")

_NON_INTERACTIVE = {"agg", "pdf", "ps", "svg", "pgf", "cairo", "template"}


def _to_numpy(array: Any) -> Optional[np.ndarray]:
    if array is None:
        return None
    if hasattr(array, "detach"):  # a torch tensor
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _check_sign(sign: str) -> None:
    if sign not in SIGNS:
        raise ValueError(f"sign must be one of {SIGNS}, got {sign!r}")


def _cumulative_threshold(values: np.ndarray, percentile: float) -> float:
    """Smallest value whose ascending cumulative sum reaches ``percentile`` % of the total."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {percentile}")
    ordered = np.sort(values.ravel())
    running = np.cumsum(ordered)
    # first index reaching the target; clamped because round-off can leave the total just below it
    first = min(int(np.searchsorted(running, running[-1] * percentile / 100.0, side="left")), len(ordered) - 1)
    return float(ordered[first])


def normalize_attr(attr: Any, sign: str = "absolute_value", outlier_perc: Union[int, float] = 2) -> np.ndarray:
    """Attribution map scaled to [0, 1] (``[-1, 1]`` for ``sign="all"``), channels summed.

    ``negative`` maps the most negative values to 1. A map with nothing of the chosen sign gives
    zeros (Captum raises instead), so a server can still render an empty heat map.
    """
    _check_sign(sign)
    attr = _to_numpy(attr).astype(np.float64)
    if attr.ndim == 3:
        attr = attr.sum(axis=2)
    if sign == "positive":
        attr = np.maximum(attr, 0)
    elif sign == "negative":
        attr = np.minimum(attr, 0)
    elif sign == "absolute_value":
        attr = np.abs(attr)
    scale = _cumulative_threshold(np.abs(attr), 100.0 - outlier_perc)
    if scale == 0:
        return np.zeros_like(attr)
    if scale < 1e-5:
        warnings.warn("attributions are all close to 0; the normalized map may be misleading", stacklevel=2)
    if sign == "negative":
        scale = -scale
    return np.clip(attr / scale, -1, 1)


def _as_uint8_range(image: np.ndarray) -> np.ndarray:
    return np.clip(image.astype(int), 0, 255)


def _default_cmap(sign: str):
    if sign == "all":
        from matplotlib.colors import LinearSegmentedColormap

        return LinearSegmentedColormap.from_list("RdWhGn", ["red", "white", "green"]), -1, 1
    return {"positive": "Greens", "negative": "Reds", "absolute_value": "Blues"}[sign], 0, 1


def _draw(
    fig,
    ax,
    attr: Any,
    original_image: Any,
    method: str,
    sign: str,
    outlier_perc: Union[int, float],
    cmap: Any,
    alpha_overlay: float,
    show_colorbar: bool,
    title: Optional[str],
) -> None:
    """Draw one attribution picture on ``ax`` (the whole of ``visualize_image_attr`` but the figure)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    _check_sign(sign)
    image = _to_numpy(original_image)
    if image is not None:
        if image.ndim == 2:
            image = image[:, :, None]
        if np.max(image) <= 1.0:
            image = _as_uint8_range(image * 255)
    elif method != "heat_map":
        raise ValueError(f"method {method!r} needs original_image")
    if method in ("masked_image", "alpha_scaling") and sign == "all":
        raise ValueError(f"method {method!r} cannot show both signs; choose another sign")

    ax.xaxis.set_ticks_position("none")
    ax.yaxis.set_ticks_position("none")
    ax.set_xticklabels([])
    ax.set_yticklabels([])
    ax.grid(visible=False)

    norm = normalize_attr(attr, sign, outlier_perc)
    default_cmap, vmin, vmax = _default_cmap(sign)
    cmap = default_cmap if cmap is None else cmap
    mappable = None
    if method == "heat_map":
        mappable = ax.imshow(norm, cmap=cmap, vmin=vmin, vmax=vmax)
    elif method == "blended_heat_map":
        ax.imshow(np.mean(image, axis=2), cmap="gray")
        mappable = ax.imshow(norm, cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha_overlay)
    elif method == "original_image":
        ax.imshow(image[:, :, 0] if image.shape[2] == 1 else image, cmap="gray" if image.shape[2] == 1 else None)
    elif method == "masked_image":
        masked = _as_uint8_range(image * norm[:, :, None])
        ax.imshow(masked[:, :, 0] if masked.shape[2] == 1 else masked, cmap="gray" if masked.shape[2] == 1 else None)
    else:  # alpha_scaling: the normalized attribution becomes the opacity of each pixel
        rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3]
        ax.imshow(np.concatenate([rgb, _as_uint8_range(norm[:, :, None] * 255)], axis=2))

    if show_colorbar:
        from mpl_toolkits.axes_grid1 import make_axes_locatable

        bar_ax = make_axes_locatable(ax).append_axes("bottom", size="5%", pad=0.1)
        if mappable is not None:
            fig.colorbar(mappable, orientation="horizontal", cax=bar_ax)
        else:
            bar_ax.axis("off")  # keeps panels aligned when some have a color bar
    if title:
        ax.set_title(title)


def _new_figure(fig_size: Tuple[float, float], use_pyplot: bool, **subplots_kwargs):
    """A figure and its axes: through pyplot, or detached (Agg canvas, no global state)."""
    if use_pyplot:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=fig_size)
    else:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=fig_size)
        FigureCanvasAgg(fig)
    return fig, fig.subplots(**subplots_kwargs)


def _show() -> None:
    import matplotlib.pyplot as plt

    if plt.get_backend().lower() not in _NON_INTERACTIVE:
        plt.show()


def visualize_image_attr(
    attr: Any,
    original_image: Any = None,
    method: str = "heat_map",
    sign: str = "absolute_value",
    plt_fig_axis: Optional[Tuple[Any, Any]] = None,
    outlier_perc: Union[int, float] = 2,
    cmap: Any = None,
    alpha_overlay: float = 0.5,
    show_colorbar: bool = False,
    title: Optional[str] = None,
    fig_size: Tuple[float, float] = (6, 6),
    use_pyplot: bool = True,
):
    """Draw an (H, W, C) or (H, W) attribution map; returns ``(figure, axis)`` like Captum.

    ``method``: heat_map, blended_heat_map (over the grey original), original_image, masked_image
    (original times the normalized map) or alpha_scaling (map as opacity). ``sign``: positive,
    negative, absolute_value or all (not for masked_image / alpha_scaling). ``original_image`` is
    HWC in [0, 1] or [0, 255]. With ``use_pyplot=False`` the figure is detached from pyplot.
    """
    if plt_fig_axis is not None:
        fig, ax = plt_fig_axis
    else:
        fig, ax = _new_figure(fig_size, use_pyplot)
    if isinstance(ax, (list, tuple)):
        ax = ax[0]
    _draw(fig, ax, attr, original_image, method, sign, outlier_perc, cmap, alpha_overlay, show_colorbar, title)
    if use_pyplot:
        _show()
    return fig, ax


def visualize_image_attr_multiple(
    attr: Any,
    original_image: Any,
    methods: List[str],
    signs: List[str],
    titles: Optional[List[str]] = None,
    fig_size: Tuple[float, float] = (8, 6),
    use_pyplot: bool = True,
    **kwargs: Any,
):
    """Several ``visualize_image_attr`` panels side by side (one per method/sign pair)."""
    if len(methods) != len(signs):
        raise ValueError("methods and signs must have the same length")
    if titles is not None and len(titles) != len(methods):
        raise ValueError("titles must have the same length as methods")
    fig, axes = _new_figure(fig_size, use_pyplot, nrows=1, ncols=len(methods), squeeze=False)
    axes = list(axes[0])
    for i, (method, sign) in enumerate(zip(methods, signs)):
        visualize_image_attr(
            attr,
            original_image=original_image,
            method=method,
            sign=sign,
            plt_fig_axis=(fig, axes[i]),
            use_pyplot=False,
            title=titles[i] if titles else None,
            **kwargs,
        )
    fig.tight_layout()
    if use_pyplot:
        _show()
    return fig, axes[0] if len(axes) == 1 else axes


def save_image_attr_png(
    attr: Any,
    path_or_buffer: Union[None, str, os.PathLike, io.IOBase] = None,
    original_image: Any = None,
    method: str = "heat_map",
    sign: str = "absolute_value",
    outlier_perc: Union[int, float] = 2,
    cmap: Any = None,
    alpha_overlay: float = 0.5,
    show_colorbar: bool = False,
    title: Optional[str] = None,
    fig_size: Tuple[float, float] = (6, 6),
    dpi: float = 100,
) -> bytes:
    """Render ``visualize_image_attr`` to PNG bytes (``fig_size * dpi`` pixels) without pyplot.

    The bytes are returned and, when ``path_or_buffer`` is given, also written there. Safe to call
    from several threads; no figure outlives the call.
    """
    fig, ax = _new_figure(fig_size, use_pyplot=False)
    _draw(fig, ax, attr, original_image, method, sign, outlier_perc, cmap, alpha_overlay, show_colorbar, title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    data = buffer.getvalue()
    if path_or_buffer is not None:
        if hasattr(path_or_buffer, "write"):
            path_or_buffer.write(data)
        else:
            with open(path_or_buffer, "wb") as f:
                f.write(data)
    return data


# ---------------------------------------------------------------------------------------------
# Text


class VisualizationDataRecord:
    """Everything one row of ``visualize_text`` shows about one explained text."""

    __slots__ = [
        "word_attributions",
        "pred_prob",
        "pred_class",
        "true_class",
        "attr_class",
        "attr_score",
        "raw_input_ids",
        "convergence_score",
    ]

    def __init__(
        self,
        word_attributions: Any,
        pred_prob: float,
        pred_class: Any,
        true_class: Any,
        attr_class: Any,
        attr_score: float,
        raw_input_ids: Sequence[str],
        convergence_score: Any,
    ) -> None:
        self.word_attributions = word_attributions
        self.pred_prob = pred_prob
        self.pred_class = pred_class
        self.true_class = true_class
        self.attr_class = attr_class
        self.attr_score = attr_score
        self.raw_input_ids = raw_input_ids
        self.convergence_score = convergence_score


def _word_color(score: float) -> str:
    """Green for positive, red for negative; more saturated as |score| grows to 1 (clipped)."""
    score = max(-1.0, min(1.0, float(score)))
    if score > 0:
        return f"hsl(120, 75%, {100 - int(50 * score)}%)"
    return f"hsl(0, 75%, {100 - int(40 * -score)}%)"


def _display_token(token: str) -> str:
    """Special tokens such as ``<s>`` shown as ``#s``; everything HTML-escaped."""
    token = str(token)
    if token.startswith("<") and token.endswith(">"):
        token = "#" + token.strip("<>")
    return html.escape(token)


def _cell(text: Any) -> str:
    return f'<td><text style="padding-right:2em"><b>{html.escape(str(text))}</b></text></td>'


def format_word_importances(words: Sequence[str], importances: Any) -> str:
    """One ``<td>`` with each word highlighted by the color of its importance."""
    scores = _to_numpy(importances) if importances is not None else None
    if scores is None or scores.size == 0:
        return "<td></td>"
    if scores.ndim != 1:
        raise ValueError(f"expected one importance per word, got shape {scores.shape}")
    if len(words) > len(scores):
        raise ValueError(f"{len(words)} words but only {len(scores)} importances")
    marks = [
        f'<mark style="background-color: {_word_color(s)}; opacity:1.0; line-height:1.75">'
        f'<font color="black"> {_display_token(w)} </font></mark>'
        for w, s in zip(words, scores)
    ]
    return "<td>" + "".join(marks) + "</td>"


def visualize_text(datarecords: Iterable[VisualizationDataRecord], legend: bool = True) -> str:
    """An HTML table of records (labels, scores, colored words); returned as a string.

    Inside a running IPython/Jupyter session the table is also displayed; IPython is never
    imported otherwise.
    """
    rows = [
        "<tr><th>True Label</th><th>Predicted Label</th><th>Attribution Label</th>"
        "<th>Attribution Score</th><th>Word Importance</th></tr>"
    ]
    for record in datarecords:
        rows.append(
            "<tr>"
            + _cell(record.true_class)
            + _cell(f"{record.pred_class} ({float(record.pred_prob):.2f})")
            + _cell(record.attr_class)
            + _cell(f"{float(record.attr_score):.2f}")
            + format_word_importances(record.raw_input_ids, record.word_attributions)
            + "</tr>"
        )
    parts = []
    if legend:
        parts.append(
            '<div style="border-top: 1px solid; margin-top: 5px; padding-top: 5px; display: inline-block">'
            "<b>Legend: </b>"
        )
        for value, label in ((-1, "Negative"), (0, "Neutral"), (1, "Positive")):
            parts.append(
                '<span style="display: inline-block; width: 10px; height: 10px; border: 1px solid; '
                f'background-color: {_word_color(value)}"></span> {label}  '
            )
        parts.append("</div>")
    parts.append('<table width="100%">')
    parts.extend(rows)
    parts.append("</table>")
    page = "".join(parts)
    _maybe_display(page)
    return page


def _maybe_display(page: str) -> None:
    ipython = sys.modules.get("IPython")
    if ipython is None or getattr(ipython, "get_ipython", lambda: None)() is None:
        return
    from IPython.display import HTML, display  # noqa: WPS433 - only inside a live IPython

    display(HTML(page))
