"""``--ray``: the audit's batches computed by Ray actors, each opening both versions once.

Every actor holds a ``Pair`` (an archive is unpacked and loaded once per actor); the driver sends
batches round-robin with a bounded number in flight (memory stays bounded) and folds the records
back in example order, so the summary equals the single-process one.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Dict, Iterable, Iterator, List, Sequence, Tuple

from .run import Pair, Plan
from .sources import AuditError

IN_FLIGHT_PER_ACTOR = 2


class _Worker:
    def __init__(self, plan: Plan) -> None:
        import torch

        torch.set_num_threads(1)  # one CPU per actor
        self.pair = Pair(plan)

    def compute(self, batch: Sequence[Tuple[int, Any]]) -> List[Dict[str, Any]]:
        return self.pair.compute(batch)

    def close(self) -> None:
        self.pair.close()


def _connect(address: str):
    try:
        import ray
    except ImportError as exc:
        raise AuditError("--ray needs Ray: pip install 'explain-serve[ray]'") from exc
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False)
    return ray


def compute_distributed(address: str, plan: Plan, batches: Iterable[Sequence[Tuple[int, Any]]]) -> Iterator[List[Dict[str, Any]]]:
    """Records of every batch, in order, computed by one actor per available CPU."""
    ray = _connect(address)
    n_actors = max(1, int(ray.available_resources().get("CPU", 1)))
    remote = ray.remote(num_cpus=1)(_Worker)
    actors = [remote.remote(plan) for _ in range(n_actors)]
    pending: deque = deque()
    try:
        for i, batch in enumerate(batches):
            pending.append(actors[i % n_actors].compute.remote(list(batch)))
            if len(pending) >= IN_FLIGHT_PER_ACTOR * n_actors:
                yield ray.get(pending.popleft())
        while pending:
            yield ray.get(pending.popleft())
    except ray.exceptions.RayTaskError as exc:
        cause = exc.as_instanceof_cause()
        if isinstance(cause, AuditError):
            raise AuditError(str(cause).splitlines()[-1]) from exc
        raise
    finally:
        for actor in actors:
            try:
                ray.get(actor.close.remote(), timeout=30)
            except Exception:  # an actor that died has nothing left to close
                pass
            ray.kill(actor)
