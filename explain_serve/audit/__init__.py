"""A/B explanation audit: how two model versions explain the same data (issue #11).

``agreement`` holds the per-example and global agreement metrics (pure numpy).
"""
from .agreement import HIGHER_IS_BETTER, PER_EXAMPLE, agreement, ndcg_at_k

__all__ = ["agreement", "ndcg_at_k", "PER_EXAMPLE", "HIGHER_IS_BETTER"]
