"""The oracle for batch-invariant seeded methods: a method run on each example alone (seeded the
same way each time), the answers concatenated. A batch must give exactly this."""
import numpy as np
import torch


def take(value, i):
    """Example ``i`` of an input, target or additional-argument value (shared values as they are)."""
    if isinstance(value, tuple):
        return tuple(take(v, i) for v in value)
    if isinstance(value, list):
        return [value[i]]
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value[i:i + 1]
    return value


def _cat(parts):
    first = parts[0]
    if isinstance(first, (tuple, list)):
        return type(first)(_cat([p[k] for p in parts]) for k in range(len(first)))
    return torch.cat(parts)


def per_example(call, n, per_example_values, seed=5):
    """``call(**values of example i)`` for each of ``n`` examples under ``torch``/``numpy`` seed
    ``seed``, concatenated along the batch."""
    parts = []
    for i in range(n):
        torch.manual_seed(seed)
        np.random.seed(seed)
        parts.append(call(**{k: take(v, i) for k, v in per_example_values.items()}))
    return _cat(parts)
