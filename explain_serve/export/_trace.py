"""Trace a torch function (forward and backward) into an aten graph and export it to ONNX.

``make_fx`` in symbolic mode records every aten operator the function runs, including the ones
autograd runs for ``torch.autograd.grad``; backward operators are rewritten on the way by
``backward_ops``. The batch size stays symbolic: operators whose sizes depend on it are turned back
into tensor methods so that the TorchScript-based ONNX exporter records their sizes as graph values
(a dynamic batch axis) rather than as the constants seen while tracing.
"""
from __future__ import annotations

import io
import warnings
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import Tensor

from .backward_ops import FunctionOverrides, decompositions

DEFAULT_OPSET = 17
_EXAMPLE_BATCHES = (13, 11, 17, 19, 23, 29, 31, 37)


def example_batch_size(*tensors: Tensor, avoid: Sequence[int] = ()) -> int:
    """A batch size equal to no other size seen while tracing (symbolic tracing unifies equal sizes)."""
    seen = set(avoid)
    for t in tensors:
        seen.update(int(s) for s in t.shape[1:])
    for b in _EXAMPLE_BATCHES:
        if b not in seen:
            return b
    raise ValueError("could not choose an example batch size distinct from the input sizes")


def _is_size(arg) -> bool:
    if isinstance(arg, torch.fx.Node):
        value = arg.meta.get("val")
        return isinstance(value, (torch.SymInt, int)) and not isinstance(value, bool)
    if isinstance(arg, (list, tuple)):
        return any(_is_size(a) for a in arg)
    return False


_RENAMED = {"view": "reshape", "_unsafe_view": "reshape"}
_DROPPED_KWARGS = ("pin_memory", "layout", "memory_format")


def _slice(x: Tensor, dim: int = 0, start=None, end=None, step: int = 1) -> Tensor:
    """``aten.slice`` as Python indexing, which the tracer records with dynamic bounds."""
    if isinstance(end, int) and end >= 2**62:
        end = None
    index = (slice(None),) * (dim % x.dim()) + (slice(start, end, step),)
    return x[index]


def _dynamic_sizes(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Rewrite size-carrying aten calls as tensor methods (see the module docstring)."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in (torch.ops.aten.lift_fresh_copy.default, torch.ops.aten.lift_fresh.default):
            node.replace_all_uses_with(node.args[0])  # constants made by torch.tensor(...)
            gm.graph.erase_node(node)
            continue
        if node.target is torch.ops.aten._unsafe_view.default:  # no exporter entry; a view is the same op
            node.target = torch.ops.aten.view.default
        if node.target is torch.ops.aten._to_copy.default:  # dtype casts: no exporter entry for _to_copy
            dtype = node.kwargs.get("dtype")
            node.op, node.target = "call_method", "to"
            node.kwargs = {"dtype": dtype} if dtype is not None else {}
            continue
        if node.target is torch.ops.aten.sym_size.int:
            node.op, node.target = "call_method", "size"
            continue
        if not isinstance(node.target, torch._ops.OpOverload):
            continue
        if not any(_is_size(a) for a in list(node.args) + list(node.kwargs.values())):
            continue
        name = node.target.overloadpacket.__name__
        name = _RENAMED.get(name, name)
        if name == "slice":
            node.target = _slice
            continue
        if not hasattr(Tensor, name) or not isinstance(node.args[0], torch.fx.Node):
            raise NotImplementedError(f"{node.target} with a batch-dependent size")
        node.op, node.target = "call_method", name
        node.kwargs = {k: v for k, v in node.kwargs.items() if k not in _DROPPED_KWARGS}
    gm.graph.lint()
    gm.recompile()
    return gm


def _symbol(size):
    return size.node.expr if isinstance(size, torch.SymInt) else None


def _specialize(gm: torch.fx.GraphModule, example_args: Sequence[Tensor], dynamic: Sequence[Sequence[int]]) -> None:
    """Replace every size that depends only on static input axes by its value.

    Symbolic tracing makes every axis symbolic; only the ``dynamic`` axes of each input (the batch,
    and the length of token ids) stay symbolic in the exported graph. Constant sizes let the exporter
    emit constant shapes instead of Shape/Gather/Concat chains.
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    values = {}
    for node, arg, axes in zip(placeholders, example_args, dynamic):
        shape = node.meta["val"].shape
        for d, size in enumerate(shape):
            sym = _symbol(size)
            if sym is not None and d not in axes and getattr(sym, "is_Symbol", False):
                values[sym] = int(arg.shape[d])
    dynamic_symbols = set()
    for node, axes in zip(placeholders, dynamic):
        for d in axes:
            sym = _symbol(node.meta["val"].shape[d])
            if sym is not None:
                dynamic_symbols |= sym.free_symbols
    for node in list(gm.graph.nodes):
        sym = _symbol(node.meta.get("val"))
        if sym is None or node.op == "placeholder":
            continue
        if not (sym.free_symbols & dynamic_symbols):
            node.replace_all_uses_with(int(sym.subs(values)))
            gm.graph.erase_node(node)


def _fewer_dynamic_sizes(gm: torch.fx.GraphModule) -> None:
    """``view(x, [34, s0, 30])`` -> ``view(x, [34, -1, 30])``; ``expand`` keeps matching axes as -1."""
    aten = torch.ops.aten
    for node in gm.graph.nodes:
        if node.op != "call_function" or len(node.args) < 2 or not isinstance(node.args[1], (list, tuple)):
            continue
        sizes = list(node.args[1])
        if node.target in (aten.view.default, aten._unsafe_view.default, aten.reshape.default):
            symbolic = [i for i, s in enumerate(sizes) if isinstance(s, torch.fx.Node)]
            if len(symbolic) == 1 and -1 not in sizes:
                sizes[symbolic[0]] = -1
                node.args = (node.args[0], sizes) + tuple(node.args[2:])
        elif node.target is aten.expand.default and isinstance(node.args[0], torch.fx.Node):
            shape = list(node.args[0].meta["val"].shape)
            offset = len(sizes) - len(shape)
            for i, s in enumerate(sizes):
                if isinstance(s, torch.fx.Node) and i >= offset:
                    have, want = _symbol(shape[i - offset]), _symbol(s.meta.get("val"))
                    if have is not None and want is not None and have == want:
                        sizes[i] = -1
            node.args = (node.args[0], sizes) + tuple(node.args[2:])
    gm.graph.eliminate_dead_code()


# Operators linear in their first argument, with every other operand fixed by the model.
_ROWWISE_LINEAR = {
    torch.ops.aten.mm.default: lambda n: True,
    torch.ops.aten.div.Tensor: lambda n: True,
    torch.ops.aten.mul.Tensor: lambda n: True,
    torch.ops.aten.convolution.default: lambda n: n.args[2] is None and not n.args[6],  # no bias, not transposed
}


def _sum_before_linear(gm: torch.fx.GraphModule) -> None:
    """``sum_k L(H_k)`` -> ``L(sum_k H_k)`` where L is linear, the same for every row, and fixed by the model.

    Path methods stack k copies of the batch, take the gradient of all of them, and add the copies.
    The last backward operators (the input gradient of a first convolution or linear layer, a
    normalising division) are linear maps with model-fixed weights, so the copies can be added before
    them: those operators then run on one batch instead of k batches.
    """
    aten = torch.ops.aten
    varying = set()  # nodes that depend on a graph input
    for node in gm.graph.nodes:
        if node.op == "placeholder" or any(a in varying for a in node.all_input_nodes):
            varying.add(node)
    for total in list(gm.graph.nodes):
        if total.target is not aten.sum.dim_IntList or list(total.args[1]) != [0] or len(total.args) > 2 or total.kwargs:
            continue
        split = total.args[0]
        if split.target is not aten.view.default or len(split.users) != 1:
            continue
        copies, rest = split.args[1][0], list(split.args[1][2:])
        chain, head = [], split.args[0]
        while (head.op == "call_function" and head.target in _ROWWISE_LINEAR and len(head.users) == 1
               and _ROWWISE_LINEAR[head.target](head) and isinstance(head.args[0], torch.fx.Node)
               and not any(a in varying for a in head.all_input_nodes if a is not head.args[0])):
            chain.append(head)
            head = head.args[0]
        value = head.meta.get("val")
        if not chain or not isinstance(copies, int) or value is None:
            continue
        trailing = [int(s) if not isinstance(s, torch.SymInt) else None for s in value.shape[1:]]
        if None in trailing:
            continue
        with gm.graph.inserting_before(total):
            stacked = gm.graph.call_function(aten.view.default, (head, [copies, -1] + trailing))
            out = gm.graph.call_function(aten.sum.dim_IntList, (stacked, [0]))
            for op in reversed(chain):
                out = gm.graph.call_function(op.target, (out,) + tuple(op.args[1:]), dict(op.kwargs))
            out = gm.graph.call_function(aten.view.default, (out, [-1] + rest))
        total.replace_all_uses_with(out)
        for node in [total, split] + chain:
            gm.graph.erase_node(node)
    gm.graph.lint()


def trace(
    fn: Callable,
    example_args: Sequence[Tensor],
    dynamic: Optional[Sequence[Sequence[int]]] = None,
    extra_decompositions: Optional[Dict] = None,
):
    """``fn`` as an aten-level ``GraphModule`` without backward operators.

    ``dynamic`` lists, per argument, the axes that stay symbolic (default: axis 0 of each).
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    def traced(*args):
        with FunctionOverrides():
            return fn(*args)

    gm = make_fx(
        traced,
        decomposition_table=decompositions(extra_decompositions),
        tracing_mode="symbolic",
        _allow_non_fake_inputs=True,
    )(*example_args)
    gm.graph.eliminate_dead_code()
    _sum_before_linear(gm)
    _specialize(gm, example_args, dynamic if dynamic is not None else [[0]] * len(example_args))
    _fewer_dynamic_sizes(gm)
    return _dynamic_sizes(gm)


def to_onnx(
    module: torch.nn.Module,
    example_args: Sequence[Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int = DEFAULT_OPSET,
    dynamic_axes: Optional[Dict[str, Dict[int, str]]] = None,
) -> bytes:
    """ONNX bytes of ``module`` (TorchScript-based exporter); default: axis 0 of every tensor dynamic."""
    axes = dynamic_axes or {name: {0: "batch"} for name in list(input_names) + list(output_names)}
    buffer = io.BytesIO()
    if hasattr(torch._C, "_jit_set_onnx_log_output_stream"):
        # the exporter dumps the whole graph when an operator has no translation: keep stdout clean
        torch._C._jit_set_onnx_log_output_stream("stderr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(example_args),
            buffer,
            dynamo=False,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
        )
    return buffer.getvalue()
