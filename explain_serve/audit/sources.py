"""The two sides of an audit: a ``.mar`` explained in-process, or a served endpoint over HTTP.

Both answer the server's wire contract. An archive is unpacked and loaded by ``ExplainService``
with its own config, exactly as its TorchServe worker would, and every request goes through the
worker's ``handle`` (same parsing, batching and core calls); an endpoint
``http(s)://HOST:PORT/explanations/NAME[/VERSION]`` gets the same bodies over HTTP with the
inference token. A refused request stops the audit with the side, the example and the server's
message (``AuditError``), since every later number would be wrong.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import urllib.parse
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor


class AuditError(ValueError):
    """Bad arguments or data: the CLI prints the message and exits 2."""


def _refusal(side: str, spec: str, index: int, status: int, answer: Any) -> AuditError:
    message = answer.get("message", answer) if isinstance(answer, dict) else answer
    return AuditError(f"version {side} ({spec}) answered {status} for example {index}: {message}")


class ArchiveSource:
    """A ``.mar`` loaded in-process by the worker's own ``ExplainService``."""

    in_process = True

    def __init__(self, path: str, side: str) -> None:
        from ..serving.service import ExplainService

        self.spec, self.side = str(path), side
        archive = Path(path)
        if not archive.is_file():
            raise AuditError(f"--{side} {path}: no such archive (give a .mar or http(s)://HOST:PORT/explanations/NAME)")
        self._dir = Path(tempfile.mkdtemp(prefix=f"explain-serve-audit-{side}-"))
        try:
            try:
                with zipfile.ZipFile(archive) as z:
                    z.extractall(self._dir)
                manifest = json.loads((self._dir / "MAR-INF" / "MANIFEST.json").read_text())
            except (zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
                raise AuditError(f"--{side} {path}: not a model archive ({exc})") from exc
            model = manifest.get("model", {})
            self.service = ExplainService(self._dir, model.get("serializedFile"), model.get("modelName", archive.stem),
                                          model.get("modelVersion", "1.0"), model.get("modelFile"))
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self.kind = self.service.kind
        self.name, self.version = self.service.model_name, self.service.version

    @property
    def forward(self) -> Callable[[Tensor], Tensor]:
        """The model itself (what its explanations explain): quality metrics that need raw outputs."""
        return self.service.model

    @property
    def pad_id(self) -> Optional[int]:
        return int(self.service.cfg["input"]["text"]["pad_id"]) if self.kind == "text" else None

    def explain(self, indices: Sequence[int], bodies: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
        answers = self.service.handle([{"body": b} for b in bodies], [True] * len(bodies))
        out = []
        for index, (status, text) in zip(indices, answers):
            answer = json.loads(text)
            if status != 200:
                raise _refusal(self.side, self.spec, index, status, answer)
            out.append(answer)
        return out

    def resolve(self, index: int, inputs: Any, answer: Dict[str, Any]) -> Optional[Tensor]:
        """The input tensor the worker explained (its own parsing of the request)."""
        return self.service.parser.parse(index, {"inputs": inputs}, False).x

    def probabilities(self, x: Tensor) -> Tensor:
        """Class probabilities of a batch, as the worker computes its predictions."""
        return self.service._probabilities(x)

    def close(self) -> None:
        if getattr(self, "service", None) is not None:
            self.service.close()
            self.service = None
        shutil.rmtree(self._dir, ignore_errors=True)


class HttpSource:
    """A model version served by TorchServe, explained over HTTP (concurrent requests fill its batches)."""

    in_process = False
    forward = None  # /predictions answers probabilities, not the raw output the attributions explain
    pad_id = None

    def __init__(self, url: str, side: str, token: Optional[str] = None, concurrency: int = 8) -> None:
        from ..client import Client

        self.spec, self.side = url, side
        parts = urllib.parse.urlsplit(url)
        path = [p for p in parts.path.split("/") if p]
        if parts.scheme not in ("http", "https") or not parts.netloc or len(path) not in (2, 3) or path[0] != "explanations":
            raise AuditError(f"--{side} {url}: expected http(s)://HOST:PORT/explanations/NAME[/VERSION]")
        self.name = path[1]
        self.version = path[2] if len(path) == 3 else None
        self._route = "/".join(path[1:])
        self.client = Client(f"{parts.scheme}://{parts.netloc}", token=token)
        self._pool = ThreadPoolExecutor(max_workers=concurrency)
        self.kind: Optional[str] = None  # learnt from the first answer

    def _post(self, route: str, bodies: Sequence[Dict[str, Any]]) -> List[Any]:
        try:
            return list(self._pool.map(lambda b: self.client.request(f"/{route}/{self._route}", b), bodies))
        except OSError as exc:
            raise AuditError(f"--{self.side} {self.spec}: cannot reach the server ({exc})") from exc

    def explain(self, indices: Sequence[int], bodies: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
        out = []
        for index, (status, answer) in zip(indices, self._post("explanations", bodies)):
            if status != 200 or not isinstance(answer, dict):
                raise _refusal(self.side, self.spec, index, status, answer)
            out.append(answer)
        if out and self.kind is None:
            first = out[0]
            self.kind = "text" if "tokens" in first else "tabular" if "features" in first else "image"
        return out

    def resolve(self, index: int, inputs: Any, answer: Dict[str, Any]) -> Optional[Tensor]:
        """The input as numbers where the request carries them (a string must be decoded by the server)."""
        if isinstance(inputs, dict) and isinstance(answer.get("features"), dict):
            return torch.tensor([float(inputs[k]) for k in answer["features"]], dtype=torch.float32)
        if isinstance(inputs, list) and self.kind != "text":
            return torch.as_tensor(np.asarray(inputs, dtype=np.float32))
        return None

    def probabilities(self, x: Tensor) -> Tensor:
        bodies = [{"inputs": row.tolist()} for row in x]
        rows = []
        for index, (status, answer) in enumerate(self._post("predictions", bodies)):
            if status != 200 or not isinstance(answer, dict):
                raise _refusal(self.side, self.spec, index, status, answer)
            rows.append(answer["prediction"]["probabilities"])
        return torch.tensor(rows, dtype=torch.float64)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def token_from_file(path: Optional[str]) -> Optional[str]:
    """The inference key of a TorchServe ``key_file.json`` (or a file holding only the key)."""
    if not path:
        return None
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise AuditError(f"--token-file {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if isinstance(data, dict) and isinstance(data.get("inference"), dict):
        return data["inference"].get("key")
    raise AuditError(f"--token-file {path}: expected TorchServe's key_file.json or a file with the key")


def open_source(spec: str, side: str, token: Optional[str] = None):
    """An ``ArchiveSource`` for a path, an ``HttpSource`` for an http(s) URL."""
    if spec.startswith(("http://", "https://")):
        return HttpSource(spec, side, token)
    return ArchiveSource(spec, side)
