"""Soak: many mixed requests from several clients against one running server, every answer checked.

The request pool covers every served model (image, tabular, text), predictions and every allowed
method (each noise-tunnel base too), with one request in five malformed. Each pool entry's expected
answer is computed in-process by an ``ExplainService`` loaded from the same archive, fed the body
as TorchServe's backend hands it over; a served answer must have the same status and the same body
(``elapsed_ms`` aside; floats within 1e-3 relative or 1e-4 absolute: batching changes float32
summation order). Worker RSS, threads and open file descriptors are
read from ``/proc`` after a warm-up share of the requests and at the end; hook counts are checked on
the in-process services before and after the pool is computed.

Used by ``benchmarks/soak.py`` (the full run) and ``tests/serving/test_soak.py`` (a short one).
"""
from __future__ import annotations

import http.client
import json
import math
import os
import random
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .methods import METHODS
from .service import MAX_RESPONSE_ENV, ExplainService


@dataclass
class Case:
    model: str
    route: str  # "predictions" or "explanations"
    body: bytes
    malformed: bool
    expected: Tuple[int, Any] = (0, None)


def load_service(mar: Path, name: str, into: Path) -> ExplainService:
    """An in-process ExplainService from a .mar, as a worker would build it."""
    folder = Path(into) / name
    with zipfile.ZipFile(mar) as z:
        z.extractall(folder)
    manifest = json.loads((folder / "MAR-INF" / "MANIFEST.json").read_text())["model"]
    return ExplainService(folder, manifest.get("serializedFile"), name, manifest.get("modelVersion", "1.0"),
                          manifest.get("modelFile"))


def backend_row(raw: bytes) -> Dict[str, Any]:
    """The request row TorchServe's Python backend passes to the handler for an application/json body."""
    try:
        return {"body": json.loads(raw.decode("utf-8"))}
    except (UnicodeDecodeError, ValueError):
        return {"body": bytearray(raw)}


def _input(svc: ExplainService, rng: random.Random) -> Any:
    if svc.kind == "text":
        vocab = list(getattr(svc.tokenizer, "vocab", None) or ["hello", "world"])  # word vocabularies
        words = [w for w in vocab[2:] if w.isalpha()] or vocab
        return " ".join(rng.choice(words) for _ in range(rng.randint(2, 8)))
    shape = svc.cfg["input"]["shape"]
    scale = 1.0 if svc.kind == "image" else 2.0
    return np.round(np.random.default_rng(rng.randrange(1 << 30)).uniform(0, scale, shape), 3).tolist()


def _valid(svc: ExplainService, rng: random.Random) -> List[Tuple[str, Dict[str, Any]]]:
    out: List[Tuple[str, Dict[str, Any]]] = [("predictions", {"inputs": _input(svc, rng)})]
    for name in svc.methods:
        bases = list(svc.methods[name]) if name == "noise_tunnel" else [None]
        for base in bases:
            body: Dict[str, Any] = {"inputs": _input(svc, rng), "method": name,
                                    "target": rng.choice(["predicted", rng.randrange(svc.n_classes)])}
            params: Dict[str, Any] = {"base": base} if base else {}
            if METHODS[name].random:
                params["seed"] = rng.randrange(1000)
            if name in ("integrated_gradients", "layer_integrated_gradients"):
                params["n_steps"] = rng.choice([8, 16, 32])
            if params:
                body["params"] = params
            out.append(("explanations", body))
    return out


def _malformed(svc: ExplainService, rng: random.Random) -> List[Tuple[str, Any]]:
    x = _input(svc, rng)
    ig = svc.cfg["explain"]["default_method"]
    return [
        ("explanations", {"inputs": [[1.0, 2.0]] if svc.kind != "text" else {"ids": 1}}),
        ("explanations", {"inputs": x, "method": "no_such_method"}),
        ("explanations", {"inputs": x, "target": svc.n_classes + 3}),
        ("explanations", {"inputs": x, "method": ig, "params": {"n_steps": 10 ** 6}}),
        ("predictions", {"inputs": x, "colour": "red"}),
        ("explanations", {"target": 0}),
        ("explanations", b'{"inputs": [1, 2'),
        ("predictions", b"[1, 2, 3]"),
    ]


def request_pool(services: Dict[str, ExplainService], seed: int = 0) -> List[Case]:
    """Every model x (predictions + every allowed method) plus malformed bodies, with expected answers."""
    rng = random.Random(seed)
    pool: List[Case] = []
    for name, svc in services.items():
        for malformed, entries in ((False, _valid(svc, rng)), (True, _malformed(svc, rng))):
            for route, body in entries:
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                (status, text), = svc.handle([backend_row(raw)], [route == "explanations"], ["application/json"])
                pool.append(Case(name, route, raw, malformed, (status, json.loads(text))))
    return pool


def schedule(pool: Sequence[Case], n: int, malformed_share: float = 0.2, seed: int = 0) -> List[Case]:
    rng = random.Random(seed)
    good = [c for c in pool if not c.malformed]
    bad = [c for c in pool if c.malformed]
    return [rng.choice(bad) if rng.random() < malformed_share else rng.choice(good) for _ in range(n)]


def difference(expected: Any, got: Any, rtol: float = 1e-3, atol: float = 1e-4, path: str = "") -> Optional[str]:
    """Where two JSON answers differ, or None. ``elapsed_ms`` is ignored; floats agree within float32
    noise (a served item is computed in a batch with others, which changes summation order)."""
    if isinstance(expected, dict):
        if not isinstance(got, dict) or set(expected) - {"elapsed_ms"} != set(got) - {"elapsed_ms"}:
            return f"{path or '/'}: keys {sorted(expected)} != {sorted(got) if isinstance(got, dict) else got!r}"
        for k, v in expected.items():
            d = None if k == "elapsed_ms" else difference(v, got[k], rtol, atol, f"{path}/{k}")
            if d:
                return d
        return None
    if isinstance(expected, list):
        if not isinstance(got, list) or len(got) != len(expected):
            return f"{path}: {str(expected)[:80]} != {str(got)[:80]}"
        for i, (a, b) in enumerate(zip(expected, got)):
            d = difference(a, b, rtol, atol, f"{path}/{i}")
            if d:
                return d
        return None
    if isinstance(expected, float) or isinstance(got, float):
        ok = isinstance(got, (int, float)) and not isinstance(got, bool) and \
            math.isclose(float(expected), float(got), rel_tol=rtol, abs_tol=atol)
        return None if ok else f"{path}: {expected!r} != {got!r}"
    return None if expected == got else f"{path}: {str(expected)[:80]} != {str(got)[:80]}"


def proc_stats(pid: int) -> Dict[str, int]:
    """RSS (bytes), threads and open file descriptors of a process, from /proc."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss": int(status["VmRSS"].split()[0]) * 1024, "threads": int(status["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def hook_count(svc: ExplainService) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in svc.model.modules())


class _Clients:
    """Keep-alive HTTP connections, one per client thread."""

    def __init__(self, base: str, token: Optional[str]):
        host, port = base.replace("http://", "").rstrip("/").split(":")
        self.host, self.port, self.token = host, int(port), token
        self.local = threading.local()

    def post(self, path: str, body: bytes) -> Tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in (0, 1):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = self.local.conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
            try:
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (http.client.HTTPException, ConnectionError):
                conn.close()
                self.local.conn = None
                if attempt:
                    raise
        try:
            return resp.status, json.loads(raw.decode())
        except ValueError:
            return resp.status, raw.decode(errors="replace")


def run(base: str, token: Optional[str], requests: Sequence[Case], worker_pids: Callable[[], Dict[str, int]],
        clients: int = 8, warmup_share: float = 0.1, progress: Optional[Callable[[int], None]] = None) -> Dict[str, Any]:
    """Send ``requests`` from ``clients`` threads; returns counts, mismatches and worker stats."""
    http_clients = _Clients(base, token)
    lock = threading.Lock()
    counts = {"sent": 0, "ok": 0, "malformed": 0, "mismatches": 0}
    status_counts: Dict[int, int] = {}
    mismatches: List[Dict[str, Any]] = []
    warm_at = max(1, int(len(requests) * warmup_share))
    stats: Dict[str, Any] = {}
    pids_before = worker_pids()

    def one(case: Case) -> None:
        status, body = http_clients.post(f"/{case.route}/{case.model}", case.body)
        diff = f"status {case.expected[0]} != {status}" if status != case.expected[0] else \
            difference(case.expected[1], body)
        good = diff is None
        with lock:
            counts["sent"] += 1
            counts["ok"] += good
            counts["malformed"] += case.malformed
            status_counts[status] = status_counts.get(status, 0) + 1
            if not good:
                counts["mismatches"] += 1
                if len(mismatches) < 5:
                    mismatches.append({"model": case.model, "route": case.route, "difference": diff,
                                       "body": case.body[:200].decode(errors="replace")})
            if counts["sent"] == warm_at:
                stats["after_warmup"] = {m: proc_stats(p) for m, p in worker_pids().items()}
            if progress:
                progress(1)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, requests))
    elapsed = time.perf_counter() - start
    stats["end"] = {m: proc_stats(p) for m, p in worker_pids().items()}
    return {"requests": len(requests), "clients": clients, "seconds": round(elapsed, 1), "counts": counts,
            "statuses": {str(k): v for k, v in sorted(status_counts.items())}, "mismatch_examples": mismatches,
            "workers": stats, "same_workers": worker_pids() == pids_before}


def services_from_store(store: Path, models: Sequence[str], into: Optional[Path] = None,
                        max_response_size: Optional[int] = None) -> Dict[str, ExplainService]:
    """In-process services for the served archives, with the server's response size limit."""
    into = Path(into or tempfile.mkdtemp(prefix="explain-serve-soak-"))
    old = os.environ.get(MAX_RESPONSE_ENV)
    if max_response_size:
        os.environ[MAX_RESPONSE_ENV] = str(max_response_size)
    try:
        return {m: load_service(Path(store) / f"{m}.mar", m, into) for m in models}
    finally:
        if old is None:
            os.environ.pop(MAX_RESPONSE_ENV, None)
        else:
            os.environ[MAX_RESPONSE_ENV] = old


def worker_pids(management: str, token: Optional[str], models: Sequence[str]) -> Dict[str, int]:
    """The pid of each model's (first) worker, from the management API."""
    import urllib.request

    out = {}
    for m in models:
        req = urllib.request.Request(f"{management}/models/{m}", headers={"Authorization": f"Bearer {token}"} if token else {})
        with urllib.request.urlopen(req, timeout=30) as r:
            out[m] = int(json.loads(r.read())[0]["workers"][0]["pid"])
    return out
