"""LIME (Ribeiro, Singh & Guestrin 2016): fit a weighted linear surrogate around the input.

Samples are binary vectors ``z`` over interpretable features (feature groups); ``z_f = 1`` keeps
group ``f`` of the input and ``z_f = 0`` replaces it by the baseline. The model is evaluated on
each sample, each sample is weighted by its similarity to the original input, and the
coefficients of a weighted linear model fitted to ``(z, f(sample))`` are the attributions.

``LimeBase`` is the general algorithm (any sampler, transform, similarity and interpretable
model, called once per sample as in Captum). ``Lime`` adds Captum's defaults, and when those
defaults are in use it draws all samples of all examples as one tensor, builds the perturbed
inputs with masks, evaluates many samples per forward and fits every example's surrogate in one
batched least-squares solve (no per-sample Python on the hot path).
"""
from __future__ import annotations

import inspect
import math
import warnings
from functools import lru_cache
from typing import Any, Callable, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from .._core.caching import read_only
from .._core.inputs import (
    as_tuple,
    float64_array,
    format_args,
    format_baselines,
    format_output,
    is_tuple,
    solution_tensor,
    solve_in_numpy,
    take_args,
    tensorize_baselines,
)
from .._core.spd import solve_spd
from .._core.targets import TargetType, take_target
from ._base import PerturbationAttribution
from .._core.progress import shows_progress
from .._core.perturbation import (
    check_per_eval,
    evaluate_chunks,
    fits_one_forward,
    format_masks,
    forward_tensor,
    forward_units,
    select,
    select_copies,
    values_to_inputs,
)


# --------------------------------------------------------------------------------------------
# interpretable model
# --------------------------------------------------------------------------------------------
class InterpretableLinearModel:
    """Weighted least squares with an optional ridge penalty, solved in NumPy (no sklearn).

    Minimises ``sum_i w_i (y_i - b - z_i . c)^2 / sum_i w_i + alpha * |c|^2`` (the intercept
    ``b`` is not penalised). Solved as one (batched) least-squares problem in float64 with the
    pseudo-inverse, so rank-deficient designs (fewer samples than features) give the
    minimum-norm solution. Follows Captum's interpretable-model protocol: ``fit(DataLoader of
    (z, y, w))``, ``representation()`` (coefficients, shape ``(1, n_features)``), ``bias()``.
    """

    def __init__(self, alpha: float = 0.0, fit_intercept: bool = True) -> None:
        self.alpha = float(alpha)
        self.fit_intercept = fit_intercept
        self.coef_: Optional[Tensor] = None
        self.intercept_: Optional[Tensor] = None

    def fit(self, train_data: DataLoader, **kwargs: Any) -> None:
        parts = [batch for batch in train_data]
        x = torch.cat([p[0] for p in parts])
        y = torch.cat([p[1] for p in parts])
        w = torch.cat([p[2] for p in parts]) if len(parts[0]) > 2 else None
        self.fit_tensors(x, y, w)

    def fit_tensors(self, x: Tensor, y: Tensor, w: Optional[Tensor] = None) -> Tensor:
        """Fit ``x`` (…, S, F), ``y`` (…, S), ``w`` (…, S); returns coefficients (…, F).

        Solved in float64: in NumPy on the CPU for small systems (``solve_in_numpy``: there
        torch's per-operation cost, not the arithmetic, would be the time), else in torch."""
        dtype = y.dtype if y.is_floating_point() else torch.get_default_dtype()
        device = y.device
        n_feat = x.shape[-1]
        if solve_in_numpy(x.shape[-2], n_feat + 1, device):
            sol = torch.from_numpy(self._solve_numpy(float64_array(x), float64_array(y), w, n_feat))
            sol = sol.to(device=device, dtype=dtype)
        else:
            sol = self._solve_torch(x, y, w, n_feat).to(dtype)
        return self._keep(sol, n_feat)

    def fit_shared(self, x: np.ndarray, y: Tensor, w: Optional[Tensor]) -> Optional[Tensor]:
        """``fit_tensors`` of ``y`` (G, S) on one design ``x`` (S, F) bool shared by every example
        (each with its own weights ``w`` (G, S)) on the CPU, in NumPy without copying ``x`` per
        example; None where the system is too large for NumPy (``solve_in_numpy``)."""
        if not solve_in_numpy(x.shape[0], x.shape[1] + 1, y.device):
            return None
        sol = solution_tensor(self._solve_numpy(x, float64_array(y), w, x.shape[1]), y)
        return self._keep(sol.to(y.dtype if y.is_floating_point() else torch.get_default_dtype()), x.shape[1])

    def _keep(self, sol: Tensor, n_feat: int) -> Tensor:
        self.coef_ = sol[..., :n_feat]
        self.intercept_ = sol[..., n_feat] if self.fit_intercept else torch.zeros_like(sol[..., 0])
        return self.coef_

    def _solve_numpy(self, x: np.ndarray, y: np.ndarray, w, n_feat: int) -> np.ndarray:
        """The weighted ridge in NumPy, ``x`` (…, S, F) or one (S, F) shared by every example:
        the normal equations where their Cholesky factor shows them well-conditioned
        (``solve_spd``), else the minimum-norm least squares."""
        y = y.reshape(x.shape[:-1] if x.ndim > 2 else (-1, x.shape[0]))
        w = np.ones_like(y) if w is None else float64_array(w).reshape(y.shape)
        w = w / np.maximum(w.sum(-1, keepdims=True), 1e-300)
        design = np.concatenate([x, np.ones(x.shape[:-1] + (1,), dtype=x.dtype)], -1) if self.fit_intercept else x
        design = design.astype(np.float64, copy=False)
        aw = np.swapaxes(design, -1, -2) * w[..., None, :]  # (…, F + 1, S): the weighted design, transposed
        gram = aw @ design
        if self.alpha > 0:
            gram += _ridge(n_feat, design.shape[-1], self.alpha)
        sol = solve_spd(gram, aw @ y[..., None])
        if sol is not None:
            return sol[..., 0]
        # rank-deficient (fewer samples than features): minimum-norm least squares
        s = np.sqrt(w)[..., None]
        a, b = design * s, y[..., None] * s
        if self.alpha > 0:
            pen = np.zeros((a.shape[-1], a.shape[-1]))
            pen[range(n_feat), range(n_feat)] = math.sqrt(self.alpha)
            a = np.concatenate([a, np.broadcast_to(pen, a.shape[:-2] + pen.shape)], -2)
            b = np.concatenate([b, np.zeros(b.shape[:-2] + (pen.shape[0], 1))], -2)
        # torch.linalg.pinv's default cut-off: machine epsilon times the larger dimension
        rcond = np.finfo(np.float64).eps * max(a.shape[-2:])
        return (np.linalg.pinv(a, rcond=rcond) @ b)[..., 0]

    def _solve_torch(self, x: Tensor, y: Tensor, w: Optional[Tensor], n_feat: int) -> Tensor:
        """``_solve_numpy`` in torch, for large systems and other devices."""
        x = x.to(torch.float64)
        y = y.to(torch.float64).reshape(x.shape[:-1])
        w = torch.ones_like(y) if w is None else w.to(torch.float64).reshape(y.shape)
        s = torch.sqrt(w / w.sum(-1, keepdim=True).clamp_min(1e-300)).unsqueeze(-1)
        design = torch.cat([x, torch.ones_like(x[..., :1])], -1) if self.fit_intercept else x
        a, b = design * s, y.unsqueeze(-1) * s
        gram = a.transpose(-1, -2) @ a
        if self.alpha > 0:
            gram.diagonal(dim1=-2, dim2=-1)[..., :n_feat] += self.alpha
        chol, info = torch.linalg.cholesky_ex(gram)
        diag = chol.diagonal(dim1=-2, dim2=-1)
        if bool(((info == 0) & (diag.min(-1).values > 1e-6 * diag.max(-1).values)).all()):  # one sync
            return torch.cholesky_solve(a.transpose(-1, -2) @ b, chol).squeeze(-1)
        if self.alpha > 0:
            pen = torch.zeros(a.shape[-1], a.shape[-1], dtype=a.dtype, device=a.device)
            pen[range(n_feat), range(n_feat)] = math.sqrt(self.alpha)
            a = torch.cat([a, pen.expand(a.shape[:-2] + pen.shape)], -2)
            b = torch.cat([b, b.new_zeros(b.shape[:-2] + (pen.shape[0], 1))], -2)
        return (torch.linalg.pinv(a) @ b).squeeze(-1)

    def representation(self) -> Tensor:
        if self.coef_ is None:
            raise RuntimeError("the model is not fitted")
        return self.coef_.reshape(-1, self.coef_.shape[-1]) if self.coef_.dim() == 1 else self.coef_

    def bias(self) -> Optional[Tensor]:
        return self.intercept_


@lru_cache(maxsize=16)
def _ridge(n_feat: int, size: int, alpha: float) -> np.ndarray:
    """``alpha`` on the diagonal of the first ``n_feat`` of ``size`` unknowns (the intercept is not
    penalised): added to the normal equations (cached, read-only)."""
    pen = np.zeros((size, size))
    pen[range(n_feat), range(n_feat)] = alpha
    return read_only(pen)


# --------------------------------------------------------------------------------------------
# defaults (Captum's names and call conventions)
# --------------------------------------------------------------------------------------------
def _flatten_tuple(t) -> Tensor:
    return torch.cat([x.reshape(-1) for x in as_tuple(t)])


def _total(parts) -> Tensor:
    """``sum`` of tensors without the leading ``0 +`` (one op fewer per call)."""
    parts = iter(parts)
    out = next(parts)
    for p in parts:
        out = out + p
    return out


def get_exp_kernel_similarity_function(distance_mode: str = "cosine", kernel_width: float = 1.0) -> Callable:
    """Similarity ``exp(-d^2 / (2 width^2))`` of a perturbed input to the original.

    ``d`` is ``1 - cosine similarity`` (``"cosine"``) or the L2 distance (``"euclidean"``) of the
    flattened inputs. The returned function has Captum's signature
    ``(original_inp, perturbed_inp, interpretable_sample, **kwargs) -> float`` and carries
    ``batched`` and ``on_design`` attributes used by ``Lime``'s vectorized and lean paths.
    """
    if distance_mode not in ("cosine", "euclidean"):
        raise ValueError("distance_mode must be either cosine or euclidean.")

    def default_exp_kernel(original_inp, perturbed_inp, __, **kwargs) -> float:
        a, b = _flatten_tuple(original_inp), _flatten_tuple(perturbed_inp)
        if distance_mode == "cosine":
            d = 1 - torch.nn.functional.cosine_similarity(a, b, dim=0)
        else:
            d = torch.norm(a - b)
        return math.exp(-1 * float(d) ** 2 / (2 * kernel_width**2))

    def batched(original: Tuple[Tensor, ...], perturbed: Tuple[Tensor, ...], per_example: bool) -> Tensor:
        """``original`` (B, ...) tuples, ``perturbed`` (n, B, ...) tuples -> (n, B) or (n, 1)."""
        red = (lambda t: t.reshape(t.shape[0], t.shape[1], -1).sum(-1)) if per_example else (
            lambda t: t.reshape(t.shape[0], -1).sum(-1, keepdim=True))
        if distance_mode == "cosine":
            dot = _total(red(p * o) for o, p in zip(original, perturbed))
            n_o = _total(red((o * o).unsqueeze(0)) for o in original)
            n_p = _total(red(p * p) for p in perturbed)
            eps = 1e-8
            d = 1 - dot / (n_o.sqrt().clamp_min(eps) * n_p.sqrt().clamp_min(eps))
        else:
            d = _total(red((p - o) ** 2) for o, p in zip(original, perturbed)).sqrt()
        return torch.exp(-(d**2) / (2 * kernel_width**2))

    def on_design(keep: np.ndarray, x: np.ndarray, base) -> np.ndarray:
        """``batched`` for one input with one scalar per feature, from the design ``keep`` (n, F)
        bool, ``x`` (B, F) float64 and ``base`` (the number 0 or like ``x``) -> (n, B), in float64:
        copy ``i`` is ``base + keep[i] * (x - base)``, so its dot products with ``x`` and with
        itself (and its distance to ``x``) are linear in ``keep``: one matrix product each."""
        k = keep.astype(np.float64)
        diff = x - base
        if distance_mode == "cosine":
            if isinstance(base, np.ndarray):
                dot = k @ (diff * x).T + (base * x).sum(1)
                n_p = np.maximum(k @ (diff * (diff + 2 * base)).T + (base * base).sum(1), 0.0)
            else:  # against 0 a copy's dot product with x is its squared norm
                dot = n_p = k @ (x * x).T
            eps = 1e-8
            d = 1 - dot / (np.maximum(np.sqrt((x * x).sum(1)), eps) * np.maximum(np.sqrt(n_p), eps))
            d2 = d * d
        else:
            d2 = (1 - k) @ (diff * diff).T
        return np.exp(-d2 / (2 * kernel_width**2))

    default_exp_kernel.batched = batched  # type: ignore[attr-defined]
    default_exp_kernel.on_design = on_design  # type: ignore[attr-defined]
    return default_exp_kernel


def default_perturb_func(original_inp, **kwargs: Any) -> Tensor:
    """One LIME sample: each of ``num_interp_features`` features kept with probability 1/2."""
    if "num_interp_features" not in kwargs:
        raise AssertionError("Must provide num_interp_features to use default interpretable sampling function")
    device = as_tuple(original_inp)[0].device
    probs = torch.ones(1, int(kwargs["num_interp_features"])) * 0.5
    return torch.bernoulli(probs).to(device=device).long()


def default_from_interp_rep_transform(curr_sample: Tensor, original_inputs, **kwargs: Any):
    """Binary sample -> input: kept features from ``original_inputs``, others from ``baselines``.

    Needs ``feature_mask`` and ``baselines`` in ``kwargs`` (tensor or tuple like the inputs).
    """
    if "feature_mask" not in kwargs or "baselines" not in kwargs:
        raise AssertionError("Must provide feature_mask and baselines to use the default transform")
    masks, bases = kwargs["feature_mask"], kwargs["baselines"]
    if isinstance(original_inputs, Tensor):
        keep = curr_sample[0][masks].bool()
        return torch.where(keep, original_inputs, torch.as_tensor(bases, dtype=original_inputs.dtype))
    return tuple(
        torch.where(curr_sample[0][m].bool(), x, torch.as_tensor(b, dtype=x.dtype))
        for x, m, b in zip(original_inputs, masks, bases)
    )


def construct_feature_mask(feature_mask, formatted_inputs: Tuple[Tensor, ...]):
    """Interpretable features: the mask shifted to start at 0, and their count (max + 1)."""
    if feature_mask is None:
        masks = format_masks(None, formatted_inputs)
        return masks, sum(x[0:1].numel() for x in formatted_inputs)
    masks = tuple(torch.as_tensor(m) for m in as_tuple(feature_mask))
    lo = int(min(int(m.min()) for m in masks if m.numel()))
    if lo != 0:
        warnings.warn("Minimum element in feature mask is not 0, shifting indices to start at 0.", stacklevel=3)
        masks = tuple(m - lo for m in masks)
    return masks, int(max(int(m.max()) for m in masks if m.numel())) + 1


# --------------------------------------------------------------------------------------------
# LimeBase
# --------------------------------------------------------------------------------------------
class LimeBase(PerturbationAttribution):
    """The general LIME algorithm with user-supplied sampling, transforms, similarity and model.

    ``perturb_func(inputs, **kwargs)`` returns one sample (or is a generator of samples); with
    ``perturb_interpretable_space=True`` samples are interpretable vectors mapped to inputs by
    ``from_interp_rep_transform(sample, inputs, **kwargs)``, otherwise they are inputs mapped to
    the interpretable space by ``to_interp_rep_transform``. ``similarity_func(inputs,
    model_input, interpretable_sample, **kwargs)`` weights each sample. ``attribute`` returns
    ``interpretable_model.representation()`` after fitting.
    """

    _multiply_by_inputs = False  # a surrogate's coefficients, not scaled by the input

    def __init__(
        self,
        forward_func: Callable,
        interpretable_model: Any,
        similarity_func: Callable,
        perturb_func: Callable,
        perturb_interpretable_space: bool,
        from_interp_rep_transform: Optional[Callable],
        to_interp_rep_transform: Optional[Callable],
    ) -> None:
        super().__init__(forward_func)
        self.interpretable_model = interpretable_model
        self.similarity_func = similarity_func
        self.perturb_func = perturb_func
        self.perturb_interpretable_space = perturb_interpretable_space
        self.from_interp_rep_transform = from_interp_rep_transform
        self.to_interp_rep_transform = to_interp_rep_transform
        if perturb_interpretable_space and from_interp_rep_transform is None:
            raise AssertionError("Must provide transform from interpretable space to original input space")
        if not perturb_interpretable_space and to_interp_rep_transform is None:
            raise AssertionError("Must provide transform from original input space to interpretable space")

    def _fit(self, x: Tensor, y: Tensor, w: Tensor) -> Tensor:
        """Fit the interpretable model on (G, S, F) samples; coefficients (G, F)."""
        model = self.interpretable_model
        if isinstance(model, InterpretableLinearModel):
            return model.fit_tensors(x, y, w)
        coefs = []
        for g in range(x.shape[0]):
            data = TensorDataset(x[g].float(), y[g].float(), w[g].float())
            model.fit(DataLoader(data, batch_size=x.shape[1]))
            coefs.append(torch.as_tensor(model.representation()).reshape(-1))
        return torch.stack(coefs)

    @shows_progress
    def attribute(
        self,
        inputs,
        target: TargetType = None,
        additional_forward_args: Any = None,
        n_samples: int = 50,
        perturbations_per_eval: Optional[int] = None,
        show_progress: bool = False,
        **kwargs: Any,
    ) -> Tensor:
        """Draw ``n_samples`` samples, evaluate them (many per forward), fit, return the model's
        representation. ``kwargs`` are passed to the sampling, transform and similarity functions."""
        check_per_eval(perturbations_per_eval)
        args = format_args(additional_forward_args)
        generator = self.perturb_func(inputs, **kwargs) if inspect.isgeneratorfunction(self.perturb_func) else None
        interps, model_inputs, sims = [], [], []
        with torch.no_grad():
            for _ in range(n_samples):
                try:
                    sample = next(generator) if generator is not None else self.perturb_func(inputs, **kwargs)
                except StopIteration:
                    warnings.warn("Generator completed prior to given n_samples iterations!", stacklevel=2)
                    break
                if self.perturb_interpretable_space:
                    interp, model_inp = sample, self.from_interp_rep_transform(sample, inputs, **kwargs)
                else:
                    model_inp, interp = sample, self.to_interp_rep_transform(sample, inputs, **kwargs)
                sim = self.similarity_func(inputs, model_inp, interp, **kwargs)
                interps.append(torch.as_tensor(interp).reshape(1, -1))
                model_inputs.append(as_tuple(model_inp))
                sims.append(torch.as_tensor(sim, dtype=torch.float64).reshape(-1))
            n = len(model_inputs)

            def build(sl: slice):
                return tuple(torch.cat(parts, 0) for parts in zip(*model_inputs[sl]))

            outs = [out for _, out in evaluate_chunks(
                self.forward_func, build, n, perturbations_per_eval, torch.Size([1]), target, args, model_inputs[0])]
            y = torch.cat(outs, 0).reshape(-1)
            if y.numel() != n:
                raise AssertionError("Number of outputs is not appropriate, must return one output per perturbed input")
            x = torch.cat(interps, 0).to(y.device)
            w = torch.cat(sims, 0).to(y.device)
        self._fit(x.unsqueeze(0), y.unsqueeze(0), w.unsqueeze(0))
        return self.interpretable_model.representation()


# --------------------------------------------------------------------------------------------
# Lime
# --------------------------------------------------------------------------------------------
class Lime(LimeBase):
    """LIME over feature groups with Captum's defaults: keep each group with probability 1/2,
    exponential cosine kernel of width 1, and a linear surrogate (here ``InterpretableLinearModel``
    with a small ridge, ``alpha=1e-4``, instead of Captum's sklearn Lasso(alpha=0.01))."""

    def __init__(
        self,
        forward_func: Callable,
        interpretable_model: Any = None,
        similarity_func: Optional[Callable] = None,
        perturb_func: Optional[Callable] = None,
    ) -> None:
        super().__init__(
            forward_func,
            InterpretableLinearModel(alpha=1e-4) if interpretable_model is None else interpretable_model,
            get_exp_kernel_similarity_function() if similarity_func is None else similarity_func,
            default_perturb_func if perturb_func is None else perturb_func,
            True,
            default_from_interp_rep_transform,
            None,
        )

    @shows_progress
    def attribute(  # type: ignore[override]
        self,
        inputs,
        baselines=None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        feature_mask=None,
        n_samples: int = 25,
        perturbations_per_eval: Optional[int] = None,
        return_input_shape: bool = True,
        show_progress: bool = False,
    ):
        """Fit one surrogate per example (or one for the batch if the forward aggregates it).

        ``return_input_shape=True`` spreads each group's coefficient over its positions (inputs'
        shapes; first dimension 1 for an aggregating forward); ``False`` returns the
        coefficients, shape ``(n_examples or 1, n_features)``.
        """
        return self._attribute_kwargs(inputs, baselines, target, additional_forward_args, feature_mask,
                                      n_samples, perturbations_per_eval, return_input_shape)

    # hooks for the vectorized path ------------------------------------------------------------
    def _sampler(self) -> Optional[Callable[[int, int, int, Any], Tensor]]:
        """Vectorized sampler ``(groups, n_samples, n_features, device) -> bool (G, S, F)``."""
        if self.perturb_func is default_perturb_func:
            # one draw shared by every example: a batch equals its examples one by one under a seed
            return lambda g, s, f, device: (torch.rand(s, f, device=device) < 0.5).expand(g, s, f)
        return None

    def _batched_similarity(self) -> Optional[Callable]:
        """``(original, perturbed, z (n, G, F), per_example) -> (n, G)`` or None."""
        fn = getattr(self.similarity_func, "batched", None)
        if fn is None:
            return None
        return lambda orig, pert, z, per_example: fn(orig, pert, per_example)

    # ------------------------------------------------------------------------------------------
    def _attribute_kwargs(self, inputs, baselines, target, additional_forward_args, feature_mask,
                          n_samples, perturbations_per_eval, return_input_shape):
        was_tuple = is_tuple(inputs)
        inputs = as_tuple(inputs)
        check_per_eval(perturbations_per_eval)
        zeros = baselines is None  # the default baselines stay the number 0 (select takes numbers)
        baselines = (tuple(0 for _ in inputs) if zeros
                     else tensorize_baselines(format_baselines(baselines, inputs), inputs))
        args = format_args(additional_forward_args)
        one_scalar_each = feature_mask is None and len(inputs) == 1  # feature f is scalar f: no mask
        if one_scalar_each:
            raw_masks, n_feat = None, math.prod(inputs[0].shape[1:])
            masks = (None,)
        else:
            raw_masks, n_feat = construct_feature_mask(feature_mask, inputs)
            # the default masks are already in format_masks' form
            masks = raw_masks if feature_mask is None else format_masks(raw_masks, inputs)
        if n_feat > 10000:
            warnings.warn("Constructing an interpretable model with > 10000 features; group features with "
                          "a feature_mask.", stacklevel=2)
        bsz = inputs[0].shape[0]
        sampler, sim = self._sampler(), self._batched_similarity()
        vectorized = (sampler is not None and sim is not None and self.perturb_interpretable_space
                      and self.from_interp_rep_transform is default_from_interp_rep_transform)
        coefs = test = None
        if vectorized:
            design = self._design(n_samples, n_feat) if one_scalar_each and inputs[0].device.type == "cpu" else None
            if design is not None:  # the lean path: the sampler's draw, built and fitted without masks
                test, coefs = self._lean_in_one_forward(inputs[0], baselines[0], *design, target, args,
                                                        perturbations_per_eval, sim)
                z = None if coefs is not None else torch.from_numpy(design[0])  # the generic path's draw
            else:
                z = sampler(1, n_samples, n_feat, inputs[0].device)[0]  # (S, F): one draw for every example
                test, coefs = self._vectorized_in_one_forward(inputs, baselines, masks, z, target, args,
                                                              perturbations_per_eval, sim, one_scalar_each)
        if coefs is None:
            test = forward_tensor(self.forward_func, inputs, target, args)
            groups, per_eval = self._groups(test, bsz, perturbations_per_eval)
            if vectorized:
                coefs = self._vectorized(inputs, baselines, masks, z, groups, test.shape, target, args, per_eval, sim,
                                         one_scalar_each)
            else:
                if zeros:
                    baselines = tensorize_baselines(format_baselines(None, inputs), inputs)
                if raw_masks is None:
                    raw_masks = construct_feature_mask(None, inputs)[0]
                coefs = self._per_sample(inputs, baselines, raw_masks, n_feat, groups, n_samples,
                                         target, args, per_eval, was_tuple)
        groups = coefs.shape[0]
        dtype = test.dtype if test.is_floating_point() else torch.get_default_dtype()
        if coefs.dtype != dtype:
            coefs = coefs.to(dtype)
        if not return_input_shape:
            return coefs
        if one_scalar_each:  # feature f is scalar f
            shape = (groups,) + tuple(inputs[0].shape[1:])
            return format_output(was_tuple, (coefs if coefs.shape == shape else coefs.reshape(shape),))
        attrs = []
        for x, m in zip(inputs, masks):
            if groups == 1:
                a = values_to_inputs(coefs.reshape(1, n_feat).transpose(0, 1), m[0:1], (1,), x.shape)
            else:
                a = values_to_inputs(coefs.transpose(0, 1), m, (bsz,), x.shape)
            attrs.append(a)
        return format_output(was_tuple, tuple(attrs))

    @staticmethod
    def _groups(test: Tensor, bsz: int, per_eval: Optional[int]) -> Tuple[int, Optional[int]]:
        """Surrogates to fit (one per example, or one for a forward that aggregates the batch)
        and the perturbations per forward, from the forward's output on the inputs."""
        if bsz > 1 and test.numel() == bsz:
            return bsz, per_eval
        if test.numel() == 1:
            if bsz > 1:
                if per_eval is not None and per_eval > 1:
                    raise AssertionError("Perturbations per eval must be 1 when forward function returns single value per batch!")
                per_eval = 1
            return 1, per_eval
        raise AssertionError("Invalid number of outputs, forward function should return a scalar per example "
                             "or a scalar per input batch.")

    def _sample_builder(self, inputs, baselines, masks, z: Tensor, groups: int, sim, weights: Tensor,
                        one_scalar_each: bool = False):
        """``build(sl)``: the inputs of samples ``sl`` of ``z`` (S, F) (feature kept where True),
        their similarities written to ``weights[sl]`` (S, G) unless None. ``one_scalar_each``: one input with
        the default mask (feature f is its scalar f: no mask indexing)."""
        bsz = inputs[0].shape[0]
        per_example = groups > 1

        def build(sl: slice):
            zs = z[sl]
            n = zs.shape[0]
            zc = zs.unsqueeze(1).expand(-1, groups, -1)  # (n, G, F)
            perturbed = []
            for x, b, m in zip(inputs, baselines, masks):
                if one_scalar_each:  # the same draw for every example: broadcast over the batch
                    keep = zs.reshape((n, 1) + tuple(x.shape[1:]))
                elif groups == 1:
                    idx = m.reshape(m.shape[0], -1)  # (Bm, P)
                    keep = zc[:, 0][:, idx[0 if idx.shape[0] == 1 else slice(None)]]  # (n, P) or (n, B, P)
                    keep = keep.reshape((n, idx.shape[0] if idx.shape[0] > 1 else 1) + tuple(x.shape[1:]))
                else:
                    idx = m.reshape(m.shape[0], -1)  # (Bm, P)
                    keep = torch.gather(zc, 2, idx.unsqueeze(0).expand(n, bsz, idx.shape[1]))
                    keep = keep.reshape((n, bsz) + tuple(x.shape[1:]))
                perturbed.append(select(keep, x.unsqueeze(0), b.unsqueeze(0) if isinstance(b, Tensor) else b))
            perturbed = [p.expand((p.shape[0],) + tuple(x.shape)) for p, x in zip(perturbed, inputs)]
            if weights is not None:
                weights[sl] = sim(inputs, perturbed, zc, per_example).to(torch.float64).reshape(n, groups)
            return tuple(p.reshape((n * x.shape[0],) + tuple(x.shape[1:])) for p, x in zip(perturbed, inputs))

        return build

    def _vectorized_in_one_forward(self, inputs, baselines, masks, z, target, args, per_eval, sim,
                                   one_scalar_each=False):
        """``(f(inputs), coefficients)`` from one forward holding the inputs (as the sample that
        keeps every feature) and every sample, one surrogate per example; ``(None, None)``
        where that does not apply (``fits_one_forward``) or the forward aggregates the batch."""
        n_samples, n_feat = z.shape
        bsz = inputs[0].shape[0]
        if not fits_one_forward(per_eval, n_samples + 1, inputs):
            return None, None
        weights = (torch.empty((n_samples + 1, bsz), dtype=torch.float64, device=z.device)
                   if self._similarity_weighted() else None)
        zz = torch.cat([z.new_ones(1, n_feat), z])
        build = self._sample_builder(inputs, baselines, masks, zz, bsz, sim, weights, one_scalar_each)
        outs = forward_units(self.forward_func, build(slice(0, n_samples + 1)), n_samples + 1, bsz, target, args)
        if outs is None:
            return None, None
        test = outs[0]
        self._groups(test, bsz, per_eval)  # one scalar per example, or the error
        y = outs[1:].reshape(n_samples, bsz).transpose(0, 1)
        return test, self._fit_design(z, y, None if weights is None else weights[1:])

    def _lean_in_one_forward(self, x: Tensor, base, z: np.ndarray, context, target, args, per_eval, sim):
        """``_vectorized_in_one_forward`` for one input with the default feature mask on the CPU
        (feature ``f`` is scalar ``f``): the copies are one ``select_copies`` of the design ``z``
        (S, F) over the input, a design whose row 0 keeps every feature (``_design_starts_full``)
        evaluates ``f(inputs)`` there, with no extra copy, and ``_fit_lean`` gets the design's
        ``context`` (see ``_design``)."""
        n_samples, n_feat = z.shape
        bsz, inner = x.shape[0], tuple(x.shape[1:])
        extra = 0 if self._design_starts_full() else 1
        rows = n_samples + extra
        if not fits_one_forward(per_eval, rows, (x,)):
            return None, None
        perturbed = select_copies(np.concatenate([np.ones((1, n_feat), dtype=bool), z]) if extra else z, x, base)
        weights = self._lean_weights(z, x, base, perturbed[extra:], sim) if self._similarity_weighted() else None
        outs = forward_units(self.forward_func, (perturbed.reshape((rows * bsz,) + inner),), rows, bsz, target, args)
        if outs is None:
            return None, None
        test = outs[0]
        self._groups(test, bsz, per_eval)  # one scalar per example, or the error
        y = outs[extra:] if extra else outs
        if y.dim() != 2:
            y = y.reshape(n_samples, bsz)
        return test, self._fit_lean(z, context, y.transpose(0, 1), weights)

    def _fit_lean(self, z: np.ndarray, context, y: Tensor, weights: Optional[Tensor]) -> Tensor:
        """``_fit_design`` for the lean path's design ``z`` and its ``context``: one design for
        every example, not copied per example where the model is ``InterpretableLinearModel``."""
        model = self.interpretable_model
        if isinstance(model, InterpretableLinearModel) and weights is not None:
            coefs = model.fit_shared(z, y, weights.transpose(0, 1))
            if coefs is not None:
                return coefs
        return self._fit_design(torch.from_numpy(z), y, weights)

    def _lean_weights(self, z: np.ndarray, x: Tensor, base, perturbed: Tensor, sim) -> Tensor:
        """Similarities (S, B) float64 of the copies of ``z``: from the design where the similarity
        has that form (``on_design``: a few NumPy operations on the CPU), else from ``perturbed``."""
        on_design = getattr(self.similarity_func, "on_design", None)
        if on_design is not None and all(not isinstance(t, Tensor) or (
                t.dtype in (torch.float32, torch.float64) and t.device.type == "cpu" and not t.requires_grad)
                for t in (x, base)):
            flat = [t.reshape(x.shape[0], -1).numpy().astype(np.float64) if isinstance(t, Tensor) else t
                    for t in (x, base)]
            return torch.from_numpy(on_design(z, *flat))
        return sim((x,), (perturbed,), None, x.shape[0] > 1).to(torch.float64).reshape(z.shape[0], x.shape[0])

    def _design(self, n_samples: int, n_feat: int) -> Optional[Tuple[np.ndarray, Any]]:
        """The lean path's samples (S, F) bool, drawn on the CPU from the sampler's random stream
        (the same draw as ``_sampler``'s), and what the fit may take from the draw (``_fit_lean``);
        None where the sampler has no such form."""
        if self.perturb_func is default_perturb_func:
            return torch.rand(n_samples, n_feat).numpy() < 0.5, None
        return None

    def _design_starts_full(self) -> bool:
        """Whether row 0 of ``_design`` keeps every feature (its forward is ``f(inputs)``)."""
        return False

    def _vectorized(self, inputs, baselines, masks, z, groups, out_shape, target, args, per_eval, sim,
                    one_scalar_each=False):
        n_samples, n_feat = z.shape
        weights = (torch.empty((n_samples, groups), dtype=torch.float64, device=z.device)
                   if self._similarity_weighted() else None)
        build = self._sample_builder(inputs, baselines, masks, z, groups, sim, weights, one_scalar_each)
        outs = [out for _, out in evaluate_chunks(self.forward_func, build, n_samples, per_eval, out_shape,
                                                   target, args, inputs)]
        y = torch.cat(outs, 0).reshape(n_samples, groups).transpose(0, 1)
        return self._fit_design(z, y, weights)

    def _similarity_weighted(self) -> bool:
        """Whether the fit uses the similarity of each sample (else the builder skips it)."""
        return True

    def _fit_design(self, z: Tensor, y: Tensor, weights: Optional[Tensor]) -> Tensor:
        """Fit the surrogates of ``y`` (G, S) on the design ``z`` (S, F) bool shared by every
        example, weighted by the similarities ``weights`` (S, G); coefficients (G, F)."""
        g, (n_samples, n_feat) = y.shape[0], z.shape
        return self._fit(z.expand(g, n_samples, n_feat), y, weights.transpose(0, 1))

    def _per_sample(self, inputs, baselines, raw_masks, n_feat, groups, n_samples, target, args, per_eval,
                    was_tuple):
        """Captum's path for custom samplers/similarities: LimeBase per example (or batch)."""
        bsz = inputs[0].shape[0]
        masks = tuple(m.to(x.device) for m, x in zip(raw_masks, inputs))
        coefs = []
        device = inputs[0].device
        cuda = device.type == "cuda"
        # every example starts from the same random state: a batch equals its examples one by one
        rng = torch.get_rng_state(), (torch.cuda.get_rng_state(device) if cuda else None)
        for g in range(groups):
            if g:
                torch.set_rng_state(rng[0])
                if cuda:
                    torch.cuda.set_rng_state(rng[1], device)
            if groups == 1:
                xi, bi, mi, ti, ai = inputs, baselines, masks, target, args
            else:
                sel = slice(g, g + 1)
                xi = tuple(x[sel] for x in inputs)
                bi = tuple(b[sel] for b in baselines)
                mi = tuple(m[sel] if m.dim() == x.dim() and m.shape[0] == bsz else m for m, x in zip(masks, inputs))
                ti = take_target(target, sel)
                ai = take_args(args, sel)
            c = LimeBase.attribute(
                self,
                xi if was_tuple else xi[0],
                target=ti,
                additional_forward_args=ai,
                n_samples=n_samples,
                perturbations_per_eval=per_eval,
                baselines=bi if was_tuple else bi[0],
                feature_mask=mi if was_tuple else mi[0],
                num_interp_features=n_feat,
            )
            coefs.append(torch.as_tensor(c).reshape(-1))
        return torch.stack(coefs)
