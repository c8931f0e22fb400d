"""A short soak (issue #14; the full 20,000-request run is benchmarks/soak.py): 1,000 mixed requests
(every kind, predictions and every allowed method, one in five malformed) from 8 clients against the
shared server. Every answer equals the in-process service's (status and body); the workers' thread
and file-descriptor counts are constant and their RSS grows by less than 5% after warm-up; the
in-process services' hook counts are constant."""
from __future__ import annotations

import pytest

from explain_serve.serving import soak

from tests.serving.conftest import MAX_RESPONSE

pytestmark = pytest.mark.serving
MODELS = ["digits", "cancer", "sentiment"]


def test_short_soak(served, store, tmp_path):
    services = soak.services_from_store(store, MODELS, tmp_path, max_response_size=MAX_RESPONSE)
    try:
        hooks = {m: soak.hook_count(s) for m, s in services.items()}
        pool = soak.request_pool(services, seed=1)
        assert {m: soak.hook_count(s) for m, s in services.items()} == hooks
    finally:
        for s in services.values():
            s.close()
    assert sum(c.malformed for c in pool) >= 20 and len({(c.model, c.route) for c in pool}) == 6
    assert all(c.expected[0] == 200 for c in pool if not c.malformed)
    assert all(400 <= c.expected[0] < 500 for c in pool if c.malformed)
    requests = soak.schedule(pool, 1000, seed=1)
    pids = lambda: soak.worker_pids(served["endpoints"]["management"], served["keys"]["management"], MODELS)  # noqa: E731
    report = soak.run(served["endpoints"]["inference"], served["keys"]["inference"], requests, pids, clients=8,
                      warmup_share=0.2)
    assert report["counts"]["mismatches"] == 0, report["mismatch_examples"]
    assert report["counts"]["ok"] == 1000 and 150 <= report["counts"]["malformed"] <= 250, report["counts"]
    assert report["same_workers"]
    for m in MODELS:
        before, after = report["workers"]["after_warmup"][m], report["workers"]["end"][m]
        assert after["threads"] == before["threads"], (m, before, after)
        assert after["fds"] == before["fds"], (m, before, after)
        assert after["rss"] < 1.05 * before["rss"], (m, before, after)
