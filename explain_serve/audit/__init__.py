"""A/B explanation audit: how two model versions explain the same data (issue #11).

- ``agreement``: per-example and global agreement metrics (pure numpy; also used by the viewer);
- ``run_audit`` (``run``): the audit itself, writing summary.json, examples.csv and report.html;
- ``explain-serve audit`` (``cli``): the command line, exit 0 / 1 (a gate failed) / 2 (bad arguments).
"""
from .agreement import HIGHER_IS_BETTER, PER_EXAMPLE, ndcg_at_k


def run_audit(*args, **kwargs):
    """``explain_serve.audit.run.run_audit`` (imported on first use: it loads torch and the serving code)."""
    from .run import run_audit as run

    return run(*args, **kwargs)


__all__ = ["run_audit", "ndcg_at_k", "PER_EXAMPLE", "HIGHER_IS_BETTER"]
