"""``LLMAttributionResult``: what an LLM attribution returns, and its pictures.

``seq_attr`` has one score per input feature for the whole target sequence; ``token_attr`` one
row per output token and one column per input feature (None for methods that only explain the
sequence). The plots draw on a fresh matplotlib ``Figure`` without pyplot (thread-safe in a
server; nothing stays open) unless ``show=True``; matplotlib is imported only when drawing.
"""
from __future__ import annotations

from textwrap import shorten
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ..._core.errors import AttributionArgumentError


def _as_tensor(value: Any) -> Optional[Tensor]:
    if value is None or isinstance(value, Tensor):
        return value
    return torch.tensor(value)


def _label(token: str) -> str:
    return shorten(repr(token)[1:-1], width=50, placeholder="...")


class LLMAttributionResult:
    """Attributions of an LLM's output tokens to its input features (Captum's result type)."""

    def __init__(
        self,
        *,
        input_tokens: List[str],
        output_tokens: List[str],
        seq_attr: Any,
        token_attr: Any = None,
        output_probs: Any = None,
        inp: Any = None,
    ) -> None:
        self.input_tokens = list(input_tokens)
        self.output_tokens = list(output_tokens)
        self.seq_attr = seq_attr
        self.token_attr = token_attr
        self.output_probs = output_probs
        self.inp = inp

    # validated fields ---------------------------------------------------------------------
    @property
    def seq_attr(self) -> Tensor:
        return self._seq_attr

    @seq_attr.setter
    def seq_attr(self, value: Any) -> None:
        t = _as_tensor(value)
        if t is None or t.dim() != 1 or t.shape[0] != len(self.input_tokens):
            raise AttributionArgumentError(
                f"seq_attr must be 1-D with one value per input token ({len(self.input_tokens)}), "
                f"got shape {None if t is None else tuple(t.shape)}"
            )
        self._seq_attr = t

    @property
    def token_attr(self) -> Optional[Tensor]:
        return self._token_attr

    @token_attr.setter
    def token_attr(self, value: Any) -> None:
        t = _as_tensor(value)
        expected = (len(self.output_tokens), len(self.input_tokens))
        if t is not None and tuple(t.shape) != expected:
            raise AttributionArgumentError(f"token_attr must have shape (output tokens, input tokens) = {expected}, got {tuple(t.shape)}")
        self._token_attr = t

    @property
    def output_probs(self) -> Optional[Tensor]:
        return self._output_probs

    @output_probs.setter
    def output_probs(self, value: Any) -> None:
        t = _as_tensor(value)
        if t is not None and (t.dim() != 1 or t.shape[0] != len(self.output_tokens)):
            raise AttributionArgumentError(f"output_probs must be 1-D with one value per output token, got {tuple(t.shape)}")
        self._output_probs = t

    @property
    def seq_attr_dict(self) -> Dict[str, float]:
        """Input token -> sequence attribution (a repeated token keeps its last value, as in Captum)."""
        return dict(zip(self.input_tokens, self.seq_attr.cpu().tolist()))

    def __repr__(self) -> str:
        shape = None if self.token_attr is None else tuple(self.token_attr.shape)
        return (
            f"LLMAttributionResult(input_tokens={self.input_tokens!r}, output_tokens={self.output_tokens!r}, "
            f"token_attr shape={shape})"
        )

    # pictures -----------------------------------------------------------------------------
    @staticmethod
    def _figure(show: bool, size: Tuple[float, float]):
        if show:
            import matplotlib.pyplot as plt

            fig = plt.figure(figsize=size)
        else:
            from matplotlib.figure import Figure

            fig = Figure(figsize=size)
        fig.set_facecolor("white")
        return fig, fig.add_subplot()

    @staticmethod
    def _color_map():
        from matplotlib.colors import LinearSegmentedColormap

        return LinearSegmentedColormap.from_list("RdWhGn", ["red", "white", "green"])

    @staticmethod
    def _finish(fig, show: bool):
        if show:
            import matplotlib.pyplot as plt

            plt.show()
            return None
        return fig, fig.axes[0]

    def plot_token_attr(self, show: bool = False):
        """Heat map of ``token_attr`` (rows: output tokens, columns: input tokens), values printed.

        Returns ``(figure, axes)``, or shows the plot and returns None when ``show``.
        """
        if self.token_attr is None:
            raise ValueError(
                "this result has no token_attr (the method explains only the whole sequence); use plot_seq_attr"
            )
        import numpy as np

        data = self.token_attr.detach().cpu().float().numpy()
        bound = float(np.abs(data).max()) if data.size else 0.0
        bound = bound or 1.0
        fig, ax = self._figure(show, (max(data.shape[1] * 1.3, 6.4), max(data.shape[0] / 2.5, 4.8)))
        ax.grid(False)
        im = ax.imshow(data, vmin=-bound, vmax=bound, cmap=self._color_map(), aspect="auto")
        fig.colorbar(im, ax=ax).ax.set_ylabel("Token Attribution", rotation=-90, va="bottom")
        ax.set_xticks(np.arange(data.shape[1]), labels=[_label(t) for t in self.input_tokens])
        ax.set_yticks(np.arange(data.shape[0]), labels=[repr(t)[1:-1] for t in self.output_tokens])
        ax.tick_params(top=True, bottom=False, labeltop=True, labelbottom=False)
        for label in ax.get_xticklabels():
            label.set(rotation=-30, ha="right", rotation_mode="anchor")
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                level = im.norm(data[i, j])
                ax.text(j, i, f"{data[i, j]:.4f}", ha="center", va="center",
                        color="black" if 0.2 < level < 0.8 else "white")
        return self._finish(fig, show)

    def plot_seq_attr(self, show: bool = False):
        """Bar chart of ``seq_attr`` (positive blue, negative red), one bar per input token."""
        data = self.seq_attr.detach().cpu().float().numpy()
        n = data.shape[0]
        fig, ax = self._figure(show, (max(n / 2, 6.4), max(n / 4, 4.8)))
        ax.set_xticks(range(n), labels=[_label(t) for t in self.input_tokens])
        ax.tick_params(top=True, bottom=False, labeltop=True, labelbottom=False)
        for label in ax.get_xticklabels():
            label.set(rotation=-30, ha="right", rotation_mode="anchor")
        ax.bar(range(n), [max(float(v), 0.0) for v in data], align="center", color="#4772b3")
        ax.bar(range(n), [min(float(v), 0.0) for v in data], align="center", color="#d0365b")
        ax.set_ylabel("Sequence Attribution", rotation=90, va="bottom")
        return self._finish(fig, show)

    def plot_image_heatmap(self, show: bool = False, target_token_pos: Any = None):
        """Attributions of an ``ImageMaskInput`` painted over the (gray) image.

        ``target_token_pos``: None (the sequence attribution), an output position, or a
        ``(start, stop)`` range of output positions whose rows are summed.
        """
        from ..interpretable_input import ImageMaskInput

        if not isinstance(self.inp, ImageMaskInput):
            raise ValueError("plot_image_heatmap needs a result computed on an ImageMaskInput")
        if target_token_pos is None:
            attr = self.seq_attr
        elif self.token_attr is None:
            raise ValueError("this result has no token_attr; use target_token_pos=None")
        elif isinstance(target_token_pos, int):
            attr = self.token_attr[target_token_pos]
        else:
            start, stop = target_token_pos
            attr = self.token_attr[start:stop].sum(0)
        import numpy as np

        pixels = self.inp.format_pixel_attr(attr.float()).cpu().numpy()
        bound = float(np.abs(pixels).max()) or 1.0
        fig, ax = self._figure(show, (6.4, 4.8))
        ax.imshow(np.asarray(self.inp.image).mean(axis=2), cmap="gray")
        heat = ax.imshow(pixels, vmin=-bound, vmax=bound, cmap=self._color_map(), alpha=0.8)
        fig.colorbar(heat, ax=ax).ax.set_ylabel("Attribution", rotation=-90, va="bottom")
        ax.axis("off")
        return self._finish(fig, show)
