"""Streaming statistics of attributions (Captum's ``Stat`` family), in constant memory.

A ``Stat`` is updated with one tensor at a time and answers ``get()`` at any point. Stats that
depend on others (``Var`` needs ``MSE`` and ``Count``; ``MSE`` needs ``Mean``) find them through the
summarizer that owns them (``_get_stat``), so each quantity is computed once per update. Two stats
are equal when their class and parameters are, which is how a summarizer deduplicates them.
Mean and squared deviation use Welford's update (Welford 1962): stable for long streams.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Union

import torch
from torch import Tensor

from .._core.errors import AttributionArgumentError

StatValue = Union[Tensor, int, float]


class Stat:
    """A statistic updated with ``update(x)`` and read with ``get()``; ``name`` is its summary key."""

    def __init__(self, name: Optional[str] = None, **kwargs: Any) -> None:
        self.params: Dict[str, Any] = kwargs
        self._name = name
        self._other_stats = None  # the SummarizerSingleTensor that owns this stat

    def init(self) -> None:
        """Look up the stats this one depends on (called once its owner knows every stat)."""

    def _get_stat(self, stat: "Stat") -> Optional["Stat"]:
        if self._other_stats is None:
            raise AttributionArgumentError(f"{type(self).__name__} is not attached to a summarizer")
        return self._other_stats.get(stat)

    def update(self, x: Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def get(self) -> Optional[StatValue]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __hash__(self) -> int:
        return hash((type(self), frozenset(self.params.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stat) and type(self) is type(other) and self.params == other.params

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    @property
    def name(self) -> str:
        if self._name is not None:
            return self._name
        base = type(self).__name__.lower()
        return f"{base}({self.params})" if self.params else base


class Count(Stat):
    """Number of updates."""

    def __init__(self, name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self.n: Optional[int] = None

    def update(self, x: Tensor) -> None:
        self.n = (self.n or 0) + 1

    def get(self) -> Optional[int]:
        return self.n


class Mean(Stat):
    """Running element-wise mean (integer inputs are averaged in float64)."""

    def __init__(self, name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self.rolling_mean: Optional[Tensor] = None
        self.n: Optional[Count] = None

    def init(self) -> None:
        self.n = self._get_stat(Count())

    def update(self, x: Tensor) -> None:
        if self.rolling_mean is None:
            self.rolling_mean = x.clone() if x.is_floating_point() else x.double()
        else:
            self.rolling_mean = self.rolling_mean + (x - self.rolling_mean) / self.n.get()

    def get(self) -> Optional[Tensor]:
        return self.rolling_mean


class MSE(Stat):
    """Sum of squared deviations from the mean (Welford's M2; not divided by the count)."""

    def __init__(self, name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self.prev_mean: Optional[Tensor] = None
        self.mse: Optional[Tensor] = None
        self.mean: Optional[Mean] = None

    def init(self) -> None:
        self.mean = self._get_stat(Mean())

    def update(self, x: Tensor) -> None:
        mean = self.mean.get()
        if mean is not None and self.prev_mean is not None:
            term = (x - self.prev_mean) * (x - mean)
            self.mse = term if self.mse is None else self.mse + term
        if mean is not None:
            self.prev_mean = mean.clone()

    def get(self) -> Optional[Tensor]:
        if self.mse is None and self.prev_mean is not None:
            return torch.zeros_like(self.prev_mean)
        return self.mse


class Var(Stat):
    """Variance ``M2 / (n - order)`` in float64: ``order=0`` population, ``order=1`` sample variance."""

    def __init__(self, name: Optional[str] = None, order: int = 0) -> None:
        if name is None:
            name = {0: "variance", 1: "sample_variance"}.get(order, f"variance({order})")
        super().__init__(name=name, order=order)
        self.order = order
        self.mse_stat: Optional[MSE] = None
        self.n_stat: Optional[Count] = None

    def init(self) -> None:
        self.mse_stat = self._get_stat(MSE())
        self.n_stat = self._get_stat(Count())

    def update(self, x: Tensor) -> None:
        pass

    def get(self) -> Optional[Tensor]:
        mse = self.mse_stat.get()
        if mse is None:
            return None
        n = self.n_stat.get()
        if n is None or n <= self.order:
            return torch.zeros_like(mse)
        return mse.to(torch.float64) / (n - self.order)


class StdDev(Stat):
    """Square root of ``Var(order)``."""

    def __init__(self, name: Optional[str] = None, order: int = 0) -> None:
        if name is None:
            # Captum's key for orders other than 0 and 1 is "std_dev{order})"; kept for compatibility
            name = {0: "std_dev", 1: "sample_std_dev"}.get(order, f"std_dev{order})")
        super().__init__(name=name, order=order)
        self.order = order
        self.var_stat: Optional[Var] = None

    def init(self) -> None:
        self.var_stat = self._get_stat(Var(order=self.order))

    def update(self, x: Tensor) -> None:
        pass

    def get(self) -> Optional[Tensor]:
        var = self.var_stat.get()
        return None if var is None else var.sqrt()


class GeneralAccumFn(Stat):
    """``result = fn(result, x)`` over the updates (the first update is kept as a copy)."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], name: Optional[str] = None) -> None:
        super().__init__(name=name)
        self.result: Optional[Tensor] = None
        self.fn = fn

    def update(self, x: Tensor) -> None:
        self.result = x.clone() if self.result is None else self.fn(self.result, x)

    def get(self) -> Optional[Tensor]:
        return self.result


class Min(GeneralAccumFn):
    """Element-wise minimum."""

    def __init__(self, name: Optional[str] = None, min_fn: Callable[[Tensor, Tensor], Tensor] = torch.min) -> None:
        super().__init__(fn=min_fn, name=name)


class Max(GeneralAccumFn):
    """Element-wise maximum."""

    def __init__(self, name: Optional[str] = None, max_fn: Callable[[Tensor, Tensor], Tensor] = torch.max) -> None:
        super().__init__(fn=max_fn, name=name)


class Sum(GeneralAccumFn):
    """Element-wise sum."""

    def __init__(self, name: Optional[str] = None, add_fn: Callable[[Tensor, Tensor], Tensor] = torch.add) -> None:
        super().__init__(fn=add_fn, name=name)


def CommonStats() -> List[Stat]:  # noqa: N802 - Captum's name
    """Mean, sample variance, sample standard deviation, min and max."""
    return [Mean(), Var(order=1), StdDev(order=1), Min(), Max()]
