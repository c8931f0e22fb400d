"""Captum's input conventions in one place.

A tensor in gives a tensor out and a tuple in gives a tuple out; baselines may be scalars, tensors
shaped like one example or like the batch; ``additional_forward_args`` are appended to the inputs
of every forward, and expanded alongside the inputs when the batch is replicated.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .targets import TargetType, select_targets
from .errors import AttributionArgumentError

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]
BaselineType = Union[None, Tensor, int, float, Tuple[Union[Tensor, int, float], ...]]


def as_tuple(inputs: Any) -> Tuple[Any, ...]:
    if inputs is None:
        return None  # type: ignore[return-value]
    if isinstance(inputs, tuple):
        return inputs
    if isinstance(inputs, list) and inputs and all(isinstance(t, Tensor) for t in inputs):
        return tuple(inputs)
    return (inputs,)


def is_tuple(inputs: Any) -> bool:
    return isinstance(inputs, tuple)


def format_output(was_tuple: bool, output: Tuple[Any, ...]) -> Any:
    """Undo ``as_tuple``: a single tensor in gives a single tensor out."""
    if was_tuple:
        return tuple(output)
    if len(output) != 1:
        raise AttributionArgumentError(f"expected one output for a non-tuple input, got {len(output)}")
    return output[0]


def format_args(additional_forward_args: Any) -> Optional[Tuple[Any, ...]]:
    if additional_forward_args is None:
        return None
    return additional_forward_args if isinstance(additional_forward_args, tuple) else (additional_forward_args,)


def expand_args(args: Optional[Tuple[Any, ...]], n: int, interleave: bool = False) -> Optional[Tuple[Any, ...]]:
    """Additional args for a batch made of ``n`` copies (see ``targets.expand_target``)."""
    if args is None or n == 1:
        return args

    def expand(a):
        if not isinstance(a, Tensor) or a.dim() == 0:
            return a
        return a.repeat_interleave(n, dim=0) if interleave else torch.cat([a] * n, dim=0)

    return tuple(expand(a) for a in args)


def take_args(args: Optional[Tuple[Any, ...]], index) -> Optional[Tuple[Any, ...]]:
    """Additional args of a subset of examples (tensors with a batch axis are indexed)."""
    if args is None:
        return None
    return tuple(a[index] if isinstance(a, Tensor) and a.dim() > 0 else a for a in args)


# OpenBLAS keeps a matrix product on the calling thread while m * n * k stays below 4 * 65536;
# above that it starts threads of its own, which ignore torch.set_num_threads and on a busy
# machine (a server's workers) made a 1024 x 30 Kernel SHAP fit 20x slower here.
_NUMPY_MAX_PRODUCT = 4 * 65536


def solve_in_numpy(rows: int, cols: int, device: torch.device) -> bool:
    """Whether a least-squares solve of a ``(rows, cols)`` design runs in NumPy: on the CPU and
    small, where torch's per-operation cost, not the arithmetic, is the time and OpenBLAS stays on
    one thread. Larger ones (and other devices) run in torch."""
    return device.type == "cpu" and rows * cols * cols <= _NUMPY_MAX_PRODUCT


def float64_array(t: Tensor) -> np.ndarray:
    """A float64 NumPy copy or view of a tensor, for small solves in NumPy (no torch op where
    the tensor is already on the CPU and needs no grad)."""
    if t.requires_grad or t.device.type != "cpu":
        t = t.detach().cpu()
    return t.numpy().astype(np.float64, copy=False)


def solution_tensor(a: np.ndarray, like: Tensor) -> Tensor:
    """A float64 NumPy solution as a CPU tensor of ``like``'s dtype where that is float32 or
    float64 (cast in NumPy: a fraction of a torch cast's cost per call), else left float64."""
    if like.dtype == torch.float32:
        a = a.astype(np.float32)
    return torch.from_numpy(a)


def format_baselines(baselines: BaselineType, inputs: Tuple[Tensor, ...]) -> Tuple[Union[Tensor, int, float], ...]:
    """Baselines as a tuple matching ``inputs``; None means zeros."""
    if baselines is None:
        return tuple(0 for _ in inputs)
    baselines = baselines if isinstance(baselines, tuple) else (baselines,)
    if len(baselines) != len(inputs):
        raise AttributionArgumentError(f"got {len(baselines)} baselines for {len(inputs)} inputs")
    for b, x in zip(baselines, inputs):
        if isinstance(b, Tensor) and b.dim() > 0:
            if b.shape[1:] != x.shape[1:] and b.shape != x.shape[1:]:
                raise AttributionArgumentError(
                    f"baseline of shape {tuple(b.shape)} does not match input of shape {tuple(x.shape)}"
                )
            if b.shape[1:] == x.shape[1:] and b.shape[0] not in (1, x.shape[0]):
                raise AttributionArgumentError(
                    f"baseline batch size {b.shape[0]} must be 1 or the input's batch size {x.shape[0]}"
                )
    return baselines


def _baseline_dtype(b: Any, x: Tensor) -> torch.dtype:
    if x.is_floating_point() or x.is_complex():
        return x.dtype
    if isinstance(b, Tensor) and b.is_floating_point():
        return b.dtype
    if isinstance(b, float):
        return torch.get_default_dtype()
    return x.dtype


def tensorize_baselines(baselines: Sequence[Any], inputs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    """Baselines as tensors with the inputs' full shape (scalars filled, batch-1 broadcast).

    They take the input's dtype, except that a float baseline of an integer input stays float
    (ablating token ids or counts to 0.5 must not truncate to 0; Captum keeps it float too).
    """
    out = []
    for b, x in zip(baselines, inputs):
        dtype = _baseline_dtype(b, x)
        if not isinstance(b, Tensor):  # one value broadcast (a view, as a one-row baseline is)
            out.append(torch.full((1,) * x.dim(), b, dtype=dtype, device=x.device).expand_as(x))
            continue
        b = b.to(device=x.device, dtype=dtype) if b.dtype != dtype or b.device != x.device else b
        if b.dim() == 0 or b.shape == x.shape[1:]:
            b = b.expand_as(x) if b.dim() == 0 else b.unsqueeze(0).expand_as(x)
        elif b.shape[0] == 1 and x.shape[0] != 1:
            b = b.expand_as(x)
        out.append(b)
    return tuple(out)


def callable_baselines(baselines: Any, inputs: Any) -> Any:
    """Baselines given as a function: called with no argument, or with the inputs as the user gave them."""
    if callable(baselines) and not isinstance(baselines, Tensor):
        import inspect

        return baselines() if not inspect.signature(baselines).parameters else baselines(inputs)
    return baselines


def baseline_distribution(baselines: Any, inputs: Any, who: str) -> Tuple[Tensor, ...]:
    """A batch of reference examples per input (GradientShap, DeepLiftShap), checked against the inputs."""
    inputs_t = as_tuple(inputs)
    baselines = as_tuple(callable_baselines(baselines, inputs))
    if baselines is None or not all(isinstance(b, Tensor) and b.dim() > 0 for b in baselines):
        raise AttributionArgumentError(f"{who} needs baselines as a tensor distribution (or a callable returning one)")
    if len(baselines) != len(inputs_t):
        raise AttributionArgumentError(f"got {len(baselines)} baselines for {len(inputs_t)} inputs")
    for b, x in zip(baselines, inputs_t):
        if b.shape[1:] != x.shape[1:]:
            raise AttributionArgumentError(f"baselines of shape {tuple(b.shape)} do not match inputs {tuple(x.shape)}")
    return baselines


def expand_for_baseline_distribution(inputs, baselines, target, args):
    """Every input against every baseline: inputs repeated in place, baselines tiled (DeepLiftShap)."""
    from .targets import expand_target

    n, k = inputs[0].shape[0], baselines[0].shape[0]
    return (
        tuple(x.repeat_interleave(k, dim=0) for x in inputs),
        tuple(torch.cat([b] * n, dim=0) for b in baselines),
        expand_target(target, k, interleave=True),
        expand_args(args, k, interleave=True),
    )


def run_forward(
    forward_func: Callable,
    inputs: Sequence[Any],
    target: TargetType = None,
    additional_forward_args: Optional[Tuple[Any, ...]] = None,
) -> Tensor:
    """Call ``forward_func(*inputs, *additional_forward_args)`` and select the target outputs."""
    args = additional_forward_args or ()
    output = forward_func(*inputs, *args)
    if isinstance(output, torch.futures.Future):
        raise AttributionArgumentError(
            "forward_func returned a torch.futures.Future: call attribute_future(...) instead of attribute(...)"
        )
    if not isinstance(output, Tensor):
        output = torch.as_tensor(output)
    return select_targets(output, target)
