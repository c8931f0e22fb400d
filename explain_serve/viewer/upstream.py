"""The TorchServe a viewer talks to: its inference and management URLs and keys (kept on this side).

Only these calls go upstream: the model list and versions (management), the customized describe
(management, or the inference API's ``{"describe": true}`` when no management URL is given) and
``/explanations/{model}/{version}`` (inference). Nothing else is forwarded.
"""
from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..client import Client
from ..serving.server import DEFAULT_MAX_REQUEST, load_state, read_token

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")  # TorchServe model names and versions


def valid_name(value: str) -> bool:
    return bool(_NAME.match(value or "")) and ".." not in value


class Upstream:
    """One TorchServe: inference and management endpoints, their keys and the request size limit."""

    def __init__(self, inference: str, management: Optional[str], keys: Optional[Dict[str, str]] = None,
                 max_request_size: int = DEFAULT_MAX_REQUEST, timeout: float = 120.0) -> None:
        keys = keys or {}
        self.inference = Client(inference, token=keys.get("inference"), timeout=timeout)
        self.management = Client(management, token=keys.get("management"), timeout=timeout) if management else None
        self.max_request_size = max_request_size
        self.secrets = [k for k in keys.values() if k]

    @classmethod
    def from_workdir(cls, workdir: Path) -> "Upstream":
        """The server ``explain-serve serve --workdir DIR`` started (as ``explain`` finds it)."""
        info = load_state(workdir)
        keys = read_token(Path(info["token_file"])) if info.get("token_file") else {}
        return cls(info["endpoints"]["inference"], info["endpoints"]["management"], keys,
                   _max_request_size(Path(info.get("config") or Path(workdir) / "config.properties")))

    @classmethod
    def from_args(cls, server: str, management: Optional[str], token_file: Optional[Path]) -> "Upstream":
        keys = read_token(token_file, timeout=0) if token_file else {}
        return cls(server, management, keys)

    # -- management ------------------------------------------------------------------------------
    def _mgmt(self, path: str) -> Tuple[int, Any]:
        return self.management.request(path, None, method="GET")

    def models(self) -> Tuple[int, Any]:
        """``[{"name", "versions", "default"}]`` from the management API (every page)."""
        if self.management is None:
            return 501, {"message": "no management URL given: start the viewer with --management URL"}
        names: List[str] = []
        token = ""
        while True:
            status, page = self._mgmt("/models?limit=100" + (f"&next_page_token={token}" if token else ""))
            if status != 200:
                return status, page
            names += [m["modelName"] for m in page.get("models", [])]
            token = page.get("nextPageToken")
            if not token:
                break
        out = []
        for name in names:
            status, all_versions = self._mgmt(f"/models/{urllib.parse.quote(name)}/all")
            if status != 200:
                return status, all_versions
            status, default = self._mgmt(f"/models/{urllib.parse.quote(name)}")
            versions = [str(v.get("modelVersion")) for v in all_versions]
            out.append({"name": name, "versions": versions,
                        "default": str(default[0].get("modelVersion")) if status == 200 and default else versions[0]})
        return 200, out

    def describe(self, model: str, version: Optional[str]) -> Tuple[int, Any]:
        """The handler's self-description: management ``?customized=true``, else the inference API."""
        where = urllib.parse.quote(model) + (f"/{urllib.parse.quote(version)}" if version else "")
        if self.management is None:
            return self.inference.request(f"/predictions/{where}", {"describe": True})
        status, answer = self._mgmt(f"/models/{where}?customized=true")
        if status != 200:
            return status, answer
        raw = answer[0].get("customizedMetadata") if isinstance(answer, list) and answer else None
        if not raw:
            return 502, {"message": f"model {model} has no self-description (not an explain-serve handler?)"}
        return 200, json.loads(raw) if isinstance(raw, str) else raw

    # -- inference -------------------------------------------------------------------------------
    def explain(self, model: str, version: Optional[str], body: Dict[str, Any]) -> Tuple[int, Any]:
        where = urllib.parse.quote(model) + (f"/{urllib.parse.quote(version)}" if version else "")
        return self.inference.request(f"/explanations/{where}", body)


def _max_request_size(config: Path) -> int:
    """``max_request_size`` from the server's config.properties (TorchServe's default otherwise)."""
    try:
        for line in config.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "max_request_size":
                return int(value.strip())
    except (OSError, ValueError):
        pass
    return DEFAULT_MAX_REQUEST
