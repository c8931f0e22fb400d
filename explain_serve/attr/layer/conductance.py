"""Internal Influence (Leino et al., 2018) and Layer Conductance (Dhamdhere et al., 2018).

Both walk the straight input path from the baseline to the input and take, at each path point,
the gradient of the output w.r.t. the layer (``_core.layers.layer_gradients``):

* internal influence integrates that gradient (the shared quadrature, ``_core.paths.integrate``);
* conductance multiplies it by the change of the layer's activation to the next path point,
  ``sum_k grad_k * (a_{k+1} - a_k)`` over ``n_steps + 1`` points (Captum's discretisation), so
  the conductances of all of a layer's neurons sum to the output difference (the layer's share
  of the Integrated Gradients total). This couples consecutive path points, so it is not a
  weighted sum of per-point values: it uses the shared path points, quadrature nodes and
  chunking (``paths.path_points``, ``quadrature``, ``batching.chunks``), carrying the last point
  of each chunk into the next, rather than ``integrate``.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from ..._core.batching import chunks, units_per_eval
from ..._core.inputs import as_tuple, expand_args, format_args, format_baselines, tensorize_baselines
from ..._core.layers import layer_gradients
from ..._core.paths import integrate, path_points
from ..._core.quadrature import nodes_and_weights
from ..._core.targets import expand_target
from .._base import GradientAttribution, convergence_delta
from ._base import LayerMethod


class _PathLayerMethod(LayerMethod, GradientAttribution):
    def _prepare(self, inputs, baselines, additional_forward_args):
        inputs = as_tuple(inputs)
        baselines = tensorize_baselines(format_baselines(baselines, inputs), inputs)
        return inputs, baselines, format_args(additional_forward_args)

    def _grads_at(self, scratch, points, k, target, args, side, grad_kwargs):
        """Layer gradients and activations at ``k`` stacked copies of path points."""
        grads, acts = layer_gradients(
            scratch, self.layers, side, self.forward_func, points,
            expand_target(target, k), expand_args(args, k), grad_kwargs,
        )
        return grads[0], acts[0]


class InternalInfluence(_PathLayerMethod):
    """Integral over the input path of the output's gradient w.r.t. the layer (no multiplier)."""

    def attribute(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size=None,
        attribute_to_layer_input: bool = False,
        grad_kwargs=None,
    ):
        inputs, baselines, args = self._prepare(inputs, baselines, additional_forward_args)
        alphas, weights = nodes_and_weights(method, n_steps)
        with self._hooks() as scratch:
            def grad_at(points, k):
                return self._grads_at(scratch, points, k, target, args, attribute_to_layer_input, grad_kwargs)[0]

            total = integrate(grad_at, baselines, inputs, alphas, weights, units_per_eval(inputs[0].shape[0], internal_batch_size))
        return self._format([total])


class LayerConductance(_PathLayerMethod):
    """Conductance of each neuron of the layer: the flow of the IG attribution through it."""

    _multiply_by_inputs = True
    _has_convergence_delta = True

    def attribute(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size=None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        grad_kwargs=None,
    ):
        inputs, baselines, args = self._prepare(inputs, baselines, additional_forward_args)
        alphas, _ = nodes_and_weights(method, n_steps + 1)
        n = inputs[0].shape[0]
        total: Optional[List[torch.Tensor]] = None
        prev = None  # (grads, acts) at the last path point of the previous chunk
        with self._hooks() as scratch:
            for sl in chunks(len(alphas), units_per_eval(n, internal_batch_size)):
                k = sl.stop - sl.start
                points = path_points(baselines, inputs, alphas[sl])
                grads, acts = self._grads_at(scratch, points, k, target, args, attribute_to_layer_input, grad_kwargs)
                grads = [g.reshape(k, n, *g.shape[1:]) for g in grads]
                acts = [a.reshape(k, n, *a.shape[1:]) for a in acts]
                if prev is not None:
                    grads = [torch.cat([p, g]) for p, g in zip(prev[0], grads)]
                    acts = [torch.cat([p, a]) for p, a in zip(prev[1], acts)]
                part = [(g[:-1] * (a[1:] - a[:-1])).sum(0) for g, a in zip(grads, acts)]
                total = part if total is None else [t + p for t, p in zip(total, part)]
                prev = ([g[-1:] for g in grads], [a[-1:] for a in acts])
        result = self._format([tuple(total)])
        if not return_convergence_delta:
            return result
        return result, convergence_delta(self.forward_func, tuple(total), baselines, inputs, target, args)
