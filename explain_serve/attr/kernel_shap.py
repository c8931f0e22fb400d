"""Kernel SHAP (Lundberg & Lee 2017): LIME with the Shapley kernel.

With the kernel ``pi(z) = (M - 1) / (C(M, |z|) |z| (M - |z|))`` the weighted linear fit of
``f(z)`` on binary coalitions ``z`` recovers the Shapley values. The default estimator
(``_core.shapley_kernel``) enumerates the heaviest coalition sizes that fit the budget, samples the
rest in complementary pairs (Covert & Lee 2021), and solves the weighted least squares with
``phi_0 = f(baseline)`` and ``sum(phi) = f(x) - f(baseline)`` imposed exactly; one design (and one
pseudo-inverse) serves every example of a batch, so a batch equals its examples one by one under a
seed. With a user-replaced ``perturb_func`` or ``similarity_func`` it falls back to Captum's
scheme: sampled coalitions weigh 1, the full and the empty ones ``inf_weight``.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

from .._core.progress import shows_progress
from .._core.shapley_kernel import kernel_coalitions, kernel_design_folded, kernel_fit, kernel_fit_folded, size_mass
from .._core.targets import TargetType
from .lime import InterpretableLinearModel, Lime


class KernelShap(Lime):
    """Shapley values by a Shapley-kernel-weighted linear regression over feature groups."""

    def __init__(self, forward_func: Callable) -> None:
        Lime.__init__(
            self,
            forward_func,
            interpretable_model=InterpretableLinearModel(alpha=0.0),
            similarity_func=self.kernel_shap_similarity_kernel,
            perturb_func=self.kernel_shap_perturb_generator,
        )
        self.inf_weight = 1000000.0

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
        """Kernel SHAP values of each feature group (``feature_mask``; default every scalar).

        ``n_samples`` counts the full and empty coalitions (at most ``2^M`` are evaluated: then
        the values are exact). Same shapes as ``Lime.attribute``.
        """
        return self._attribute_kwargs(inputs, baselines, target, additional_forward_args, feature_mask,
                                      n_samples, perturbations_per_eval, return_input_shape)

    @staticmethod
    def _size_probs(num_features: int) -> Tensor:
        """Coalition-size distribution of the Shapley kernel over sizes 1..M-1 (index = size)."""
        return size_mass(num_features)[:num_features]

    # Captum-style per-sample functions (used when the sampler or similarity is replaced) ------
    def kernel_shap_similarity_kernel(self, _, __, interpretable_sample: Tensor, **kwargs: Any) -> Tensor:
        """Weight 1 for sampled coalitions, ``inf_weight`` for the full and the empty one."""
        if "num_interp_features" not in kwargs:
            raise AssertionError("Must provide num_interp_features to use default similarity kernel")
        k = int(interpretable_sample.sum())
        full = k == 0 or k == int(kwargs["num_interp_features"])
        return torch.tensor([self.inf_weight if full else 1.0])

    def kernel_shap_perturb_generator(self, original_inp, **kwargs: Any):
        """Yield the full coalition, the empty one, then coalitions drawn from the kernel."""
        if "num_interp_features" not in kwargs:
            raise AssertionError("num_interp_features is necessary to use kernel_shap_perturb_func")
        device = (original_inp if isinstance(original_inp, Tensor) else original_inp[0]).device
        m = int(kwargs["num_interp_features"])
        yield torch.ones(1, m, device=device, dtype=torch.long)
        yield torch.zeros(1, m, device=device, dtype=torch.long)
        while True:
            yield self._draw(1, 1, m, device)[0].long()

    def _draw(self, groups: int, n: int, m: int, device) -> Tensor:
        """``n`` coalitions per group: a size from the kernel, then a uniform subset of that size."""
        if m < 2 or n <= 0:
            return (torch.arange(n, device=device) % 2 == 0).reshape(1, n, 1).expand(groups, n, m).clone()
        sizes = torch.multinomial(self._size_probs(m), groups * n, replacement=True).reshape(groups, n, 1)
        order = torch.rand(groups, n, m).argsort(-1)
        z = torch.zeros(groups, n, m, dtype=torch.bool)
        z.scatter_(-1, order, torch.arange(m).expand(groups, n, m) < sizes)
        return z.to(device)

    # vectorized path: the estimator of _core.shapley_kernel ---------------------------------
    def _default_estimator(self) -> bool:
        return (self.perturb_func == self.kernel_shap_perturb_generator
                and self.similarity_func == self.kernel_shap_similarity_kernel)

    def _sampler(self):
        if self.perturb_func != self.kernel_shap_perturb_generator:
            return super()._sampler()

        def sample(groups: int, n: int, m: int, device) -> Tensor:
            z = kernel_coalitions(m, n, device)  # one design for every example
            return z.expand(groups, z.shape[0], m)

        return sample

    def _design(self, n_samples: int, n_feat: int):
        if self.perturb_func != self.kernel_shap_perturb_generator:
            return super()._design(n_samples, n_feat)
        return kernel_design_folded(n_feat, n_samples)  # the coalitions and their folded weights

    def _fit_lean(self, z, context, y: Tensor, weights: Optional[Tensor]) -> Tensor:
        if context is None or not self._default_estimator():
            return super()._fit_lean(z, context, y, weights)
        return self._fitted(kernel_fit_folded(z, y, context), y)

    def _design_starts_full(self) -> bool:
        return self.perturb_func == self.kernel_shap_perturb_generator  # row 0: the full coalition

    def _batched_similarity(self):
        if self.similarity_func != self.kernel_shap_similarity_kernel:
            return super()._batched_similarity()
        # the kernel weights depend on the whole design; _fit_design computes them
        return lambda orig, pert, z, per_example: torch.ones(z.shape[:2], dtype=torch.float64, device=z.device)

    def _similarity_weighted(self) -> bool:
        return not self._default_estimator()

    def _fit_design(self, z: Tensor, y: Tensor, weights: Optional[Tensor]) -> Tensor:
        if not self._default_estimator():
            return super()._fit_design(z, y, weights)
        return self._fitted(kernel_fit(z, y), y)  # one design for every example

    def _fitted(self, phi: Tensor, y: Tensor) -> Tensor:
        """``phi``, left as the interpretable model's coefficients (and ``f(baseline)`` as its
        bias), as Captum's protocol reads them after a fit."""
        model = self.interpretable_model
        model.coef_, model.intercept_ = phi, y[:, 1]
        return phi
