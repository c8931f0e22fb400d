"""Quality metrics of explanations, mirroring ``captum.metrics`` (Yeh et al. 2019).

Every metric returns one value per example and declares its direction in ``higher_is_better``
(also set on the function), so an A/B audit of two model versions knows which way is better.
"""
from .infidelity import infidelity, infidelity_perturb_func_decorator
from .sensitivity import default_perturb_func, sensitivity_max

#: Direction of each metric: both measure an error, so lower is better.
HIGHER_IS_BETTER = {
    "infidelity": infidelity.higher_is_better,
    "sensitivity_max": sensitivity_max.higher_is_better,
}

__all__ = [
    "infidelity",
    "infidelity_perturb_func_decorator",
    "sensitivity_max",
    "default_perturb_func",
    "HIGHER_IS_BETTER",
]
