"""Clients for a running explain-serve TorchServe: HTTP (/predictions, /explanations) and gRPC.

gRPC uses TorchServe's ``InferenceAPIsService.Predictions`` with input keys ``data`` (the JSON
body) and ``explain`` (``true``). Its stubs are generated on first use from the ``inference.proto``
shipped inside TorchServe's frontend jar into ``explain_serve/_grpc/`` (not committed).
"""
from __future__ import annotations

import importlib
import json
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

GRPC_DIR = Path(__file__).resolve().parent / "_grpc"
# google/rpc/status.proto (imported by inference.proto) is not shipped with grpcio-tools; its public
# definition is three fields.
_STATUS_PROTO = """syntax = "proto3";
package google.rpc;
import "google/protobuf/any.proto";
message Status { int32 code = 1; string message = 2; repeated google.protobuf.Any details = 3; }
"""

Body = Union[Dict[str, Any], bytes]


def generate_grpc_stubs(out_dir: Path = GRPC_DIR) -> Path:
    """Generate inference_pb2(_grpc).py from TorchServe's own proto (idempotent)."""
    if (out_dir / "inference_pb2_grpc.py").is_file():
        return out_dir
    import ts
    from grpc_tools import protoc

    jar = Path(ts.__file__).parent / "frontend" / "model-server.jar"
    with zipfile.ZipFile(jar) as z:
        proto = z.read("proto/inference.proto").decode()
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp)
        (src / "google" / "rpc").mkdir(parents=True)
        (src / "google" / "rpc" / "status.proto").write_text(_STATUS_PROTO)
        (src / "inference.proto").write_text(proto)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in ("inference.proto", "google/rpc/status.proto"):
            rc = protoc.main(["protoc", f"-I{src}", f"-I{include}", f"--python_out={out_dir}",
                              f"--grpc_python_out={out_dir}", str(src / name)])
            if rc != 0:
                raise RuntimeError(f"protoc failed on {name}")
    (out_dir / "__init__.py").write_text('"""Generated from TorchServe\'s inference.proto; not committed."""\n')
    return out_dir


def grpc_modules():
    """(inference_pb2, inference_pb2_grpc), generating them when missing."""
    out = generate_grpc_stubs()
    if str(out) not in sys.path:
        sys.path.append(str(out))  # generated code imports ``inference_pb2`` and ``google.rpc`` absolutely
    return importlib.import_module("inference_pb2"), importlib.import_module("inference_pb2_grpc")


class Client:
    """One server: its HTTP base URL, gRPC address and inference token (None when tokens are off)."""

    def __init__(self, http: str, grpc_address: Optional[str] = None, token: Optional[str] = None, timeout: float = 120.0):
        self.http = http.rstrip("/")
        self.grpc_address = grpc_address
        self.token = token
        self.timeout = timeout
        self._channel = None
        self._stub = None

    @classmethod
    def from_workdir(cls, workdir: Path) -> "Client":
        from .serving.server import load_state, read_token

        info = load_state(workdir)
        token = read_token(Path(info["token_file"]))["inference"] if info.get("token_file") else None
        return cls(info["endpoints"]["inference"], info["endpoints"]["grpc"], token)

    # -- HTTP ------------------------------------------------------------------------------------
    def request(self, path: str, body: Any = None, content_type: str = "application/json",
                token: Optional[str] = "default", method: str = "POST") -> Tuple[int, Any]:
        """(status, parsed JSON or text) for one HTTP call; errors are returned, not raised."""
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body
        headers = {"Content-Type": content_type} if data is not None else {}
        token = self.token if token == "default" else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.http + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw.decode())
        except ValueError:
            return status, raw.decode(errors="replace")

    def predict(self, model: str, body: Body, **kw) -> Tuple[int, Any]:
        return self.request(f"/predictions/{model}", body, **kw)

    def explain(self, model: str, body: Body, **kw) -> Tuple[int, Any]:
        return self.request(f"/explanations/{model}", body, **kw)

    def describe(self, model: str, version: Optional[str] = None) -> Tuple[int, Any]:
        """The model's self-description (``explain_serve.serving.describe``) over the inference API."""
        return self.request(f"/predictions/{model}" + (f"/{version}" if version else ""), {"describe": True})

    # -- gRPC ------------------------------------------------------------------------------------
    def _grpc(self):
        if self._stub is None:
            import grpc

            if not self.grpc_address:
                raise ValueError("no gRPC address")
            _, pb2_grpc = grpc_modules()
            self._channel = grpc.insecure_channel(self.grpc_address)
            self._stub = pb2_grpc.InferenceAPIsServiceStub(self._channel)
        return self._stub

    def grpc_call(self, model: str, body: Body, explain: bool, token: Optional[str] = "default") -> Tuple[int, Any]:
        """(status, parsed JSON): status 200 on success, else the HTTP-like code from the error detail."""
        import grpc

        pb2, _ = grpc_modules()
        stub = self._grpc()
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        inputs = {"data": data}
        if explain:
            inputs["explain"] = b"true"
        token = self.token if token == "default" else token
        metadata = [("authorization", f"Bearer {token}")] if token else None
        try:
            resp = stub.Predictions(pb2.PredictionsRequest(model_name=model, input=inputs), metadata=metadata,
                                    timeout=self.timeout)
        except grpc.RpcError as err:
            detail = err.details() or ""
            try:
                parsed = json.loads(detail)
                return int(parsed.get("code", 500)), parsed
            except ValueError:
                return {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404,
                        grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403}.get(err.code(), 500), detail
        answer = json.loads(resp.prediction.decode())
        if isinstance(answer, dict) and "prediction" not in answer and isinstance(answer.get("code"), int):
            return answer["code"], answer  # a per-item error: gRPC carries it as the payload
        return 200, answer

    def grpc_explain(self, model: str, body: Body, **kw) -> Tuple[int, Any]:
        return self.grpc_call(model, body, explain=True, **kw)

    def grpc_predict(self, model: str, body: Body, **kw) -> Tuple[int, Any]:
        return self.grpc_call(model, body, explain=False, **kw)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = self._stub = None
