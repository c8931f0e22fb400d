"""Translations for the aten backward operators that the ONNX exporter cannot express.

A compiled explainer traces forward *and* backward into one aten graph; the exporter then needs an
ONNX translation for every operator in it. Backward operators such as ``convolution_backward`` have
none, so they are rewritten here, at trace time, into forward operators that do (a transposed
convolution, a scatter-add, an elementwise scale...). Only the gradient with respect to the
operator's *input* is produced: compiled explainers never differentiate with respect to weights.

``decompositions()`` returns the table handed to ``make_fx``; ``FunctionOverrides`` is active while
tracing and rewrites the few functions that PyTorch decomposes above autograd (upsampling).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

aten = torch.ops.aten


def _ints(values: Sequence, n: int) -> List[int]:
    values = list(values)
    return values * n if len(values) == 1 else values


def _static(value) -> int:
    """A concrete int (specialises a symbolic non-batch size: ONNX attributes must be constants)."""
    return int(value)


def _no_weight_grads(output_mask: Sequence[bool], what: str) -> None:
    if any(output_mask[1:]):
        raise NotImplementedError(f"{what}: only the input gradient can be compiled (weights must not require grad)")


# -- activations -------------------------------------------------------------------------------------
def threshold_backward(grad_output: Tensor, self: Tensor, threshold) -> Tensor:
    """ReLU's backward: pass the gradient where the input exceeds the threshold.

    A multiply by the 0/1 mask (the exporter turns ``where`` with a scalar into a full-size fill).
    """
    return grad_output * (self > threshold).to(grad_output.dtype)


# -- indexing -----------------------------------------------------------------------------------------
def slice_backward(grad_output: Tensor, input_sizes, dim: int, start, end, step) -> Tensor:
    """The gradient of ``x[start:end]`` along ``dim``: zero padding on both sides."""
    if step != 1:
        raise NotImplementedError("slice_backward with a step")
    dim = dim % len(input_sizes)
    size = _static(input_sizes[dim])
    start = max(0, min(size, _static(start) + size if _static(start) < 0 else _static(start)))
    after = size - start - _static(grad_output.shape[dim])
    pads = [0, 0] * (len(input_sizes) - 1 - dim) + [start, after]
    return aten.constant_pad_nd.default(grad_output, pads, 0.0)


# -- convolution --------------------------------------------------------------------------------------
def convolution_backward(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor,
    bias_sizes,
    stride,
    padding,
    dilation,
    transposed: bool,
    output_padding,
    groups: int,
    output_mask,
):
    """Input gradient of a convolution: the transposed convolution with the same weight.

    ``output_padding`` recovers input sizes that the forward stride rounded away.
    """
    _no_weight_grads(output_mask, "convolution_backward")
    if not output_mask[0]:
        return None, None, None
    nd = weight.dim() - 2
    stride, padding, dilation = _ints(stride, nd), _ints(padding, nd), _ints(dilation, nd)
    kernel = [_static(k) for k in weight.shape[2:]]
    if not transposed and all(v == 1 for v in stride) and all(v == 1 for v in dilation) and groups == 1 and all(
        padding[i] <= kernel[i] - 1 for i in range(nd)
    ):
        # Stride 1: a plain convolution with the flipped, channel-swapped kernel (runtimes tune Conv best).
        flipped = weight.flip(list(range(2, 2 + nd))).transpose(0, 1)
        pad = [kernel[i] - 1 - padding[i] for i in range(nd)]
        grad_input = aten.convolution.default(grad_output, flipped, None, [1] * nd, pad, [1] * nd, False, [0] * nd, 1)
    elif not transposed:
        extra = []
        for i in range(nd):
            full = (_static(grad_output.shape[2 + i]) - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1) + 1
            extra.append(_static(input.shape[2 + i]) - full)
        grad_input = aten.convolution.default(
            grad_output, weight, None, stride, padding, dilation, True, extra, groups
        )
    else:
        if groups != 1:
            raise NotImplementedError("convolution_backward: grouped transposed convolutions are not supported")
        grad_input = aten.convolution.default(
            grad_output, weight, None, stride, padding, dilation, False, [0] * nd, 1
        )
    return grad_input, None, None


# -- upsampling ---------------------------------------------------------------------------------------
def _source_scale(n_in: int, n_out: int, align_corners: bool, scale) -> float:
    if align_corners:
        return (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    return 1.0 / scale if scale is not None and scale > 0 else n_in / n_out


def _interpolation_matrix(n_in: int, n_out: int, mode: str, align_corners: bool, scale, like: Tensor) -> Tensor:
    """(n_out, n_in) weights of one axis of PyTorch's nearest or (bi)linear upsampling (a constant)."""
    step = _source_scale(n_in, n_out, align_corners, scale)
    rows = np.zeros((n_out, n_in))
    for dst in range(n_out):
        if mode == "nearest":
            rows[dst, min(int(math.floor(dst * step)), n_in - 1)] = 1.0
            continue
        src = step * dst if align_corners else max(step * (dst + 0.5) - 0.5, 0.0)
        lo = min(int(src), n_in - 1)
        hi = lo + 1 if lo < n_in - 1 else lo
        frac = src - lo
        rows[dst, lo] += 1.0 - frac
        rows[dst, hi] += frac
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def _separable_upsample(input: Tensor, size: Sequence[int], mode: str, align_corners: bool, scales) -> Tensor:
    """Upsampling as ``A_h @ x @ A_w^T`` with constant interpolation matrices.

    Tracing keeps it as two matrix products, whose backward (two more) exports as is; PyTorch's own
    decomposition with symbolic sizes is a gather whose backward (an index_put) does not export.
    """
    (h_in, w_in), (h_out, w_out) = [_static(v) for v in input.shape[-2:]], [_static(v) for v in size]
    a_h = _interpolation_matrix(h_in, h_out, mode, align_corners, scales[0], input)
    a_w = _interpolation_matrix(w_in, w_out, mode, align_corners, scales[1], input)
    return torch.matmul(torch.matmul(a_h, input), a_w.t())


def _interpolate(input: Tensor, size=None, scale_factor=None, mode: str = "nearest", align_corners=None,
                 recompute_scale_factor=None, antialias: bool = False) -> Optional[Tensor]:
    """``F.interpolate`` of 4-D input in nearest or bilinear mode as matrix products (else None)."""
    if input.dim() != 4 or mode not in ("nearest", "bilinear") or antialias:
        return None
    if size is not None:
        out = [size, size] if isinstance(size, int) else list(size)
        scales = [None, None]
    else:
        factors = [scale_factor, scale_factor] if isinstance(scale_factor, (int, float)) else list(scale_factor)
        out = [int(math.floor(_static(n) * float(f))) for n, f in zip(input.shape[-2:], factors)]
        scales = [None, None] if recompute_scale_factor else [float(f) for f in factors]
    linear = mode == "bilinear"
    return _separable_upsample(input, out, "linear" if linear else "nearest", bool(align_corners) and linear, scales)


class FunctionOverrides(torch.overrides.TorchFunctionMode):
    """While tracing: replace ``F.interpolate`` (nearest, bilinear) by ``_separable_upsample``.

    PyTorch decomposes symbolic-size upsampling, above autograd, into a gather whose backward does not
    export; two matrix products (forward and backward) do.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.interpolate:
            out = _interpolate(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


# -- pooling ------------------------------------------------------------------------------------------
def _max_pool_backward(grad_output: Tensor, self: Tensor, indices: Tensor, spatial: int) -> Tensor:
    """Route each output gradient to the input position its max came from (a scatter-add)."""
    lead = list(self.shape[: self.dim() - spatial])
    flat_grad = grad_output.reshape(lead + [-1])
    flat_idx = indices.reshape(lead + [-1])
    plane = 1
    for s in self.shape[self.dim() - spatial :]:
        plane = plane * _static(s)
    zeros = grad_output.new_zeros(lead + [plane])
    return zeros.scatter_add(len(lead), flat_idx, flat_grad).reshape(self.shape)


def max_pool2d_with_indices_backward(grad_output, self, kernel_size, stride, padding, dilation, ceil_mode, indices):
    return _max_pool_backward(grad_output, self, indices, 2)


def max_pool3d_with_indices_backward(grad_output, self, kernel_size, stride, padding, dilation, ceil_mode, indices):
    return _max_pool_backward(grad_output, self, indices, 3)


def _block_pool_backward(grad_output: Tensor, self: Tensor, kernel: List[int]) -> Tensor:
    """Non-overlapping average pooling's backward: repeat each gradient over its block, divided by its size.

    Written as nearest-neighbour upsampling (ONNX ``Resize``), which ONNX Runtime runs about ten
    times faster than the equivalent broadcast ``Expand`` (measured on the digits example).
    """
    (h, w), (kh, kw) = [_static(s) for s in grad_output.shape[-2:]], kernel
    batched = grad_output.dim() == 4
    g = (grad_output if batched else grad_output.unsqueeze(0)) / float(kh * kw)
    spread = aten.upsample_nearest2d.default(g, [h * kh, w * kw])
    return spread if batched else spread.squeeze(0)


def _uniform_pool_backward(grad_output: Tensor, self: Tensor, kernel: List[int], stride: List[int], padding: List[int]):
    """Average pooling's backward as a depthwise transposed convolution with a constant kernel."""
    nd = len(kernel)
    if nd == 2 and kernel == stride and not any(padding) and all(
        _static(self.shape[-2 + i]) == _static(grad_output.shape[-2 + i]) * kernel[i] for i in range(2)
    ):
        return _block_pool_backward(grad_output, self, kernel)
    channels = _static(self.shape[-nd - 1]) if self.dim() > nd else 1
    batched = self.dim() == nd + 2
    g = grad_output if batched else grad_output.unsqueeze(0)
    area = 1
    for k in kernel:
        area *= k
    weight = torch.full([channels, 1] + kernel, 1.0 / area, dtype=grad_output.dtype, device=grad_output.device)
    extra = []
    for i in range(nd):
        full = (_static(grad_output.shape[-nd + i]) - 1) * stride[i] - 2 * padding[i] + kernel[i]
        extra.append(_static(self.shape[-nd + i]) - full)
    out = aten.convolution.default(g, weight, None, stride, padding, [1] * nd, True, extra, channels)
    return out if batched else out.squeeze(0)


def avg_pool2d_backward(grad_output, self, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    kernel = _ints(kernel_size, 2)
    stride = _ints(stride, 2) if len(stride) else kernel
    padding = _ints(padding, 2)
    if divisor_override is not None or ceil_mode or (any(padding) and not count_include_pad):
        raise NotImplementedError("avg_pool2d_backward: ceil_mode, divisor_override and padding without count_include_pad")
    return _uniform_pool_backward(grad_output, self, kernel, stride, padding)


def adaptive_avg_pool2d_backward(grad_output: Tensor, self: Tensor) -> Tensor:
    """Exact when each output cell averages an equal, non-overlapping block (global pooling included)."""
    in_hw = [_static(s) for s in self.shape[-2:]]
    out_hw = [_static(s) for s in grad_output.shape[-2:]]
    if out_hw == [1, 1]:
        return grad_output.expand(self.shape) / float(in_hw[0] * in_hw[1])
    if any(i % o for i, o in zip(in_hw, out_hw)):
        raise NotImplementedError("adaptive_avg_pool2d_backward: input size not a multiple of the output size")
    kernel = [i // o for i, o in zip(in_hw, out_hw)]
    return _uniform_pool_backward(grad_output, self, kernel, kernel, [0, 0])


def adaptive_avg_pool2d(self: Tensor, output_size) -> Tensor:
    """Forward adaptive pooling as a plain average pool (the exporter lacks ``_adaptive_avg_pool2d``)."""
    in_hw = [_static(s) for s in self.shape[-2:]]
    out_hw = [_static(s) for s in output_size]
    if out_hw == [1, 1]:
        return self.mean(dim=(-2, -1), keepdim=True)
    if any(i % o for i, o in zip(in_hw, out_hw)):
        raise NotImplementedError("adaptive_avg_pool2d: input size not a multiple of the output size")
    kernel = [i // o for i, o in zip(in_hw, out_hw)]
    return aten.avg_pool2d.default(self, kernel, kernel)


# -- normalisation ------------------------------------------------------------------------------------
def native_batch_norm_backward(
    grad_out, input, weight, running_mean, running_var, save_mean, save_invstd, train, eps, output_mask
):
    """Eval-mode batch norm is a per-channel affine map: its input gradient is a per-channel scale."""
    if train:
        raise NotImplementedError("batch norm backward in training mode (call model.eval() before compiling)")
    _no_weight_grads(output_mask, "native_batch_norm_backward")
    shape = [1, -1] + [1] * (input.dim() - 2)
    scale = torch.rsqrt(running_var + eps)
    if weight is not None:
        scale = scale * weight
    return grad_out * scale.reshape(shape), None, None


def native_batch_norm_eval(input, weight, bias, running_mean, running_var, training, momentum, eps):
    """Forward eval-mode batch norm as elementwise arithmetic (exports everywhere, folds to constants)."""
    if training:
        raise NotImplementedError("batch norm in training mode (call model.eval() before compiling)")
    shape = [1, -1] + [1] * (input.dim() - 2)
    scale = torch.rsqrt(running_var + eps)
    shift = -running_mean * scale
    if weight is not None:
        scale, shift = scale * weight, shift * weight
    if bias is not None:
        shift = shift + bias
    out = input * scale.reshape(shape) + shift.reshape(shape)
    empty = input.new_zeros([0])
    return out, empty, empty


def batch_norm_no_training(input, weight, bias, running_mean, running_var, momentum, eps):
    return native_batch_norm_eval(input, weight, bias, running_mean, running_var, False, momentum, eps)


# -- embedding ----------------------------------------------------------------------------------------
def embedding_dense_backward(grad_output: Tensor, indices: Tensor, num_weights, padding_idx, scale_grad_by_freq):
    """Gradient of an embedding table: scatter-add each row's gradient into its token's row."""
    if scale_grad_by_freq:
        raise NotImplementedError("embedding_dense_backward with scale_grad_by_freq")
    dim = _static(grad_output.shape[-1])
    flat_idx = indices.reshape(-1)
    flat_grad = grad_output.reshape(-1, dim)
    if padding_idx is not None and padding_idx >= 0:
        flat_grad = flat_grad * (flat_idx != padding_idx).unsqueeze(1).to(flat_grad.dtype)
    index = flat_idx.unsqueeze(1).expand(-1, dim)
    return flat_grad.new_zeros([_static(num_weights), dim]).scatter_add(0, index, flat_grad)


# -- elementwise backward ops with simple closed forms -------------------------------------------------
def sigmoid_backward(grad_output: Tensor, output: Tensor) -> Tensor:
    return grad_output * output * (1 - output)


def tanh_backward(grad_output: Tensor, output: Tensor) -> Tensor:
    return grad_output * (1 - output * output)


def softmax_backward_data(grad_output: Tensor, output: Tensor, dim: int, input_dtype) -> Tensor:
    return output * (grad_output - (grad_output * output).sum(dim, keepdim=True))


def log_softmax_backward_data(grad_output: Tensor, output: Tensor, dim: int, input_dtype) -> Tensor:
    return grad_output - torch.exp(output) * grad_output.sum(dim, keepdim=True)


def softmax(self: Tensor, dim: int, half_to_float: bool = False) -> Tensor:
    """Forward ``_softmax`` from primitives (the exporter only knows the public ``softmax``)."""
    shifted = torch.exp(self - self.amax(dim, keepdim=True))
    return shifted / shifted.sum(dim, keepdim=True)


def log_softmax(self: Tensor, dim: int, half_to_float: bool = False) -> Tensor:
    shifted = self - self.amax(dim, keepdim=True)
    return shifted - torch.log(torch.exp(shifted).sum(dim, keepdim=True))


def leaky_relu_backward(grad_output: Tensor, self: Tensor, negative_slope, self_is_result: bool) -> Tensor:
    return torch.where(self > 0, grad_output, grad_output * negative_slope)


def hardtanh_backward(grad_output: Tensor, self: Tensor, min_val, max_val) -> Tensor:
    inside = torch.logical_and(self > min_val, self < max_val)
    return torch.where(inside, grad_output, torch.zeros_like(grad_output))


def gelu_backward(grad_output: Tensor, self: Tensor, approximate: str = "none") -> Tensor:
    if approximate == "tanh":
        k = 0.7978845608028654  # sqrt(2 / pi)
        inner = k * (self + 0.044715 * self * self * self)
        t = torch.tanh(inner)
        d_inner = k * (1 + 3 * 0.044715 * self * self)
        return grad_output * (0.5 * (1 + t) + 0.5 * self * (1 - t * t) * d_inner)
    cdf = 0.5 * (1 + torch.erf(self * 0.7071067811865476))
    pdf = torch.exp(-0.5 * self * self) * 0.3989422804014327
    return grad_output * (cdf + self * pdf)


def silu_backward(grad_output: Tensor, self: Tensor) -> Tensor:
    s = torch.sigmoid(self)
    return grad_output * s * (1 + self * (1 - s))


def native_dropout_backward(grad_output: Tensor, mask: Tensor, scale) -> Tensor:
    return grad_output * mask.to(grad_output.dtype) * scale


_TABLE: Dict[object, Callable] = {
    aten.threshold_backward.default: threshold_backward,
    aten.convolution_backward.default: convolution_backward,
    aten.slice_backward.default: slice_backward,
    aten.max_pool2d_with_indices_backward.default: max_pool2d_with_indices_backward,
    aten.max_pool3d_with_indices_backward.default: max_pool3d_with_indices_backward,
    aten.avg_pool2d_backward.default: avg_pool2d_backward,
    aten._adaptive_avg_pool2d_backward.default: adaptive_avg_pool2d_backward,
    aten._adaptive_avg_pool2d.default: adaptive_avg_pool2d,
    aten.native_batch_norm_backward.default: native_batch_norm_backward,
    aten.native_batch_norm.default: native_batch_norm_eval,
    aten._native_batch_norm_legit_no_training.default: batch_norm_no_training,
    aten.embedding_dense_backward.default: embedding_dense_backward,
    aten.sigmoid_backward.default: sigmoid_backward,
    aten.tanh_backward.default: tanh_backward,
    aten._softmax_backward_data.default: softmax_backward_data,
    aten._log_softmax_backward_data.default: log_softmax_backward_data,
    aten._softmax.default: softmax,
    aten._log_softmax.default: log_softmax,
    aten.leaky_relu_backward.default: leaky_relu_backward,
    aten.hardtanh_backward.default: hardtanh_backward,
    aten.gelu_backward.default: gelu_backward,
    aten.silu_backward.default: silu_backward,
    aten.native_dropout_backward.default: native_dropout_backward,
}

# Backward operators handled by PyTorch's own decompositions into exportable primitives.
_FROM_TORCH = ("native_layer_norm_backward",)


def decompositions(extra: Optional[Dict[object, Callable]] = None) -> Dict[object, Callable]:
    """The decomposition table for tracing an attribution graph (``extra`` overrides entries)."""
    table: Dict[object, Callable] = {}
    try:
        from torch._decomp import get_decompositions

        table.update(get_decompositions([getattr(aten, name) for name in _FROM_TORCH]))
    except Exception:  # pragma: no cover - private API moved; the ops then stay unsupported
        pass
    table.update(_TABLE)
    if extra:
        table.update(extra)
    return table
