"""Starting and stopping a TorchServe process for explain-serve.

``start`` writes a safe ``config.properties`` (loopback addresses, token authorization on unless
asked otherwise, model API control off, explicit request/response size limits), starts TorchServe
in the background with its own TMPDIR (its pid file and worker sockets live there), logs and
working directory (where the token file ``key_file.json`` appears) under ``workdir``, waits until
every model has a READY worker, and records ``server.json``. ``stop`` ends that process by pid and
waits until its ports are free.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

logger = logging.getLogger(__name__)
STATE = "server.json"
PORT_NAMES = ("http", "grpc", "management", "metrics", "grpc_management")
DEFAULT_MAX_RESPONSE = 6553500
DEFAULT_MAX_REQUEST = 6553500
# Server-side batching: at most 4 requests per batch, waiting at most 2 ms for them. Under closed-loop
# load a batch of half the concurrency keeps a second batch queued while the worker computes one; on
# the digits example at 8 clients it served as many explanations as batch size 8 (1.6-2.0x batch
# size 1) with a lower p99 (benchmarks/serve_load.py, README). A lone request pays the 2 ms delay.
DEFAULT_BATCH_SIZE = 4
DEFAULT_MAX_BATCH_DELAY = 2


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def read_token(token_file: Path, timeout: float = 60.0) -> Dict[str, str]:
    """The inference and management keys (TorchServe writes the file in two steps: poll until it parses)."""
    deadline = time.time() + timeout
    while True:
        try:
            data = json.loads(Path(token_file).read_text())
            return {"inference": data["inference"]["key"], "management": data["management"]["key"]}
        except (OSError, ValueError, KeyError, TypeError):
            if time.time() > deadline:
                raise TimeoutError(f"no readable token file at {token_file}")
            time.sleep(0.2)


def _model_entries(models: Sequence[str]) -> List[Dict[str, str]]:
    out = []
    for m in models:
        name, _, mar = m.partition("=")
        out.append({"name": name, "mar": mar or f"{name}.mar"})
    return out


def _mar_version(path: Path) -> str:
    """The version in an archive's manifest (two archives of one name serve as two versions)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return str(json.loads(z.read("MAR-INF/MANIFEST.json"))["model"].get("modelVersion", "1.0"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return "1.0"


def write_config(workdir: Path, model_store: Path, models: Sequence[str], host: str, ports: Dict[str, int],
                 token: bool, batch_size: int, max_batch_delay: int, max_response_size: int,
                 max_request_size: int, per_model: Optional[Dict[str, Dict[str, Any]]] = None,
                 response_timeout: int = 120) -> Path:
    """A config.properties that listens on ``host`` only and loads ``models`` with their batch settings."""
    entries = _model_entries(models)
    model_cfg = {}
    for e in entries:
        versions = model_cfg.setdefault(e["name"], {})
        settings = {"defaultVersion": not versions, "marName": e["mar"], "minWorkers": 1, "maxWorkers": 1,
                    "batchSize": batch_size, "maxBatchDelay": max_batch_delay, "responseTimeout": response_timeout}
        settings.update((per_model or {}).get(e["name"], {}))
        versions[_mar_version(Path(model_store) / e["mar"])] = settings
    lines = [
        f"inference_address=http://{host}:{ports['http']}",
        f"management_address=http://{host}:{ports['management']}",
        f"metrics_address=http://{host}:{ports['metrics']}",
        f"grpc_inference_address={host}",
        f"grpc_inference_port={ports['grpc']}",
        f"grpc_management_address={host}",
        f"grpc_management_port={ports['grpc_management']}",
        "enable_grpc_ssl=false",
        f"model_store={model_store}",
        "load_models=" + ",".join(f"{e['name']}={e['mar']}" for e in entries),
        "models=" + json.dumps(model_cfg, separators=(",", ":")),
        f"disable_token_authorization={'false' if token else 'true'}",
        "enable_model_api=false",
        f"max_response_size={max_response_size}",
        f"max_request_size={max_request_size}",
        "default_workers_per_model=1",
        "install_py_dep_per_model=false",
        "disable_system_metrics=true",
        "number_of_netty_threads=4",
        "netty_client_threads=4",
        f"default_response_timeout={response_timeout}",
    ]
    path = Path(workdir) / "config.properties"
    path.write_text("\n".join(lines) + "\n")
    return path


_LOG_CONFIG = """<?xml version="1.0" encoding="UTF-8"?>
<!-- explain-serve: TorchServe's logs at INFO (its default is DEBUG per request), metrics logs off. -->
<Configuration>
  <Appenders>
    <RollingFile name="access_log" fileName="{logs}/access_log.log" filePattern="{logs}/access_log.%i.log.gz">
      <PatternLayout pattern="%d{{ISO8601}} - %m%n"/>
      <Policies><SizeBasedTriggeringPolicy size="100 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
    <RollingFile name="model_log" fileName="{logs}/model_log.log" filePattern="{logs}/model_log.%i.log.gz">
      <PatternLayout pattern="%d{{ISO8601}} [%-5p] %t %c - %m%n"/>
      <Policies><SizeBasedTriggeringPolicy size="100 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
    <RollingFile name="ts_log" fileName="{logs}/ts_log.log" filePattern="{logs}/ts_log.%i.log.gz">
      <PatternLayout pattern="%d{{ISO8601}} [%-5p] %t %c - %m%n"/>
      <Policies><SizeBasedTriggeringPolicy size="100 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="{access}" additivity="false"><AppenderRef ref="access_log"/></Logger>
    <Logger name="MODEL_LOG" level="info" additivity="false"><AppenderRef ref="model_log"/></Logger>
    <Logger name="MODEL_METRICS" level="off" additivity="false"/>
    <Logger name="TS_METRICS" level="off" additivity="false"/>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
    <Logger name="org.pytorch.serve" level="info" additivity="false"><AppenderRef ref="ts_log"/></Logger>
    <Root level="warn"><AppenderRef ref="ts_log"/></Root>
  </Loggers>
</Configuration>
"""


def write_log_config(workdir: Path, logs: Path, access_log: bool = True) -> Path:
    """A log4j2 config: INFO instead of TorchServe's per-request DEBUG, no metrics log lines (CPU per request)."""
    path = Path(workdir) / "log4j2.xml"
    path.write_text(_LOG_CONFIG.format(logs=logs, access="info" if access_log else "off"))
    return path


def _get(url: str, token: Optional[str], timeout: float = 2.0) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def start(model_store: Path, models: Sequence[str], workdir: Path, host: str = "127.0.0.1",
          ports: Optional[Dict[str, int]] = None, token: bool = True, batch_size: int = 1,
          max_batch_delay: int = DEFAULT_MAX_BATCH_DELAY, max_response_size: int = DEFAULT_MAX_RESPONSE,
          max_request_size: int = DEFAULT_MAX_REQUEST, per_model: Optional[Dict[str, Dict[str, Any]]] = None,
          torch_threads: Optional[int] = None, quiet_logs: bool = True, timeout: float = 240.0,
          wait_for: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Start TorchServe, wait for READY workers (of ``wait_for``, default every model), and return (and
    record) what a client needs. A model whose worker fails to load stops the wait with its error."""
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise RuntimeError("TorchServe needs Java 17+: install a JDK or set JAVA_HOME")
    workdir, model_store = Path(workdir).resolve(), Path(model_store).resolve()
    if not models:
        models = sorted(p.stem for p in model_store.glob("*.mar"))
    if not models:
        raise RuntimeError(f"no .mar files in {model_store}; run `explain-serve build-examples` first")
    for e in _model_entries(models):
        if not (model_store / e["mar"]).is_file():
            raise RuntimeError(f"{model_store / e['mar']} not found")
    state = workdir / STATE
    if state.is_file():
        old = json.loads(state.read_text())
        if pid_alive(old.get("pid", -1)):
            raise RuntimeError(f"a server from {workdir} is running (pid {old['pid']}); run `explain-serve stop` first")
    tmp, logs = workdir / "tmp", workdir / "logs"
    for d in (tmp, logs):
        d.mkdir(parents=True, exist_ok=True)
    (workdir / "key_file.json").unlink(missing_ok=True)
    ports = dict(ports or {})
    for name in PORT_NAMES:
        ports.setdefault(name, free_port(host))
    for name, port in ports.items():
        if port_in_use(host, port):
            raise RuntimeError(f"{name} port {port} on {host} is in use; choose another")
    log_start = (logs / "model_log.log").stat().st_size if (logs / "model_log.log").is_file() else 0
    cfg = write_config(workdir, model_store, models, host, ports, token, batch_size, max_batch_delay,
                       max_response_size, max_request_size, per_model)
    env = dict(os.environ)
    env.update(TMPDIR=str(tmp), TEMP=str(tmp), LOG_LOCATION=str(logs), METRICS_LOCATION=str(logs),
               EXPLAIN_SERVE_MAX_RESPONSE_SIZE=str(max_response_size))
    if torch_threads:
        env["EXPLAIN_SERVE_TORCH_THREADS"] = str(torch_threads)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("TS_CONFIG_FILE", None)
    launcher = Path(sys.executable).parent / "torchserve"
    cmd = [str(launcher)] if launcher.is_file() else [sys.executable, "-c", "from ts.model_server import start; start()"]
    cmd += ["--start", "--ncs", "--ts-config", str(cfg), "--model-store", str(model_store)]
    if quiet_logs:
        cmd += ["--log-config", str(write_log_config(workdir, logs))]
    with open(logs / "launcher.log", "ab") as out:
        proc = subprocess.run(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"torchserve --start failed (see {logs / 'launcher.log'})")
    pid_file = tmp / ".model_server.pid"
    deadline = time.time() + 30
    while not pid_file.is_file():
        if time.time() > deadline:
            raise RuntimeError(f"TorchServe wrote no pid file (see {logs})")
        time.sleep(0.1)
    pid = int(pid_file.read_text().strip())
    info = {"pid": pid, "workdir": str(workdir), "host": host, "ports": ports, "models": [e["name"] for e in _model_entries(models)],
            "token_file": str(workdir / "key_file.json") if token else None,
            "endpoints": {"inference": f"http://{host}:{ports['http']}", "management": f"http://{host}:{ports['management']}",
                          "metrics": f"http://{host}:{ports['metrics']}", "grpc": f"{host}:{ports['grpc']}"},
            "logs": str(logs), "config": str(cfg)}
    state.write_text(json.dumps(info, indent=2))
    try:
        keys = read_token(workdir / "key_file.json", timeout=timeout) if token else {}
        _wait_ready(info, keys.get("management"), time.time() + timeout, wait_for, log_start)
    except BaseException:
        stop(workdir)
        raise
    return info


LOAD_FAILED = "explain-serve: model {name} failed to load: "


def load_failed_line(name: str, exc: BaseException) -> str:
    """The one log line a worker writes when its model cannot load (the handler writes it)."""
    cause = " ".join(f"{type(exc).__name__}: {exc}".split())
    return LOAD_FAILED.format(name=name) + cause[:1000]


def load_error(logs: Path, model: str, since: int = 0) -> Optional[str]:
    """The cause of the last failed load of ``model`` in logs/model_log.log (from byte ``since``), or None."""
    path = Path(logs) / "model_log.log"
    if not path.is_file():
        return None
    marker = LOAD_FAILED.format(name=model)
    found = None
    with open(path, "rb") as f:
        f.seek(since)
        for line in f.read().decode(errors="replace").splitlines():
            if marker in line:
                found = line.split(marker, 1)[1].strip()
    return found


def _wait_ready(info: Dict[str, Any], token: Optional[str], deadline: float,
                models: Optional[Sequence[str]] = None, since: int = 0) -> None:
    """Poll the management API until each model reports a READY worker (``/ping`` is too early)."""
    base = info["endpoints"]["management"]
    pending = list(dict.fromkeys(info["models"] if models is None else models))
    versions = {name: info["models"].count(name) for name in pending}  # one name may serve several versions
    while pending:
        if not pid_alive(info["pid"]):
            raise RuntimeError(f"TorchServe exited while loading (see {info['logs']}/ts_log.log)")
        name = pending[0]
        error = load_error(Path(info["logs"]), name, since)
        if error:
            raise RuntimeError(f"model {name} failed to load: {error} (see {info['logs']}/model_log.log)")
        try:
            desc = _get(f"{base}/models/{name}/all", token) or []
            if len(desc) >= versions[name] and all(any(w.get("status") == "READY" for w in d.get("workers", []))
                                                   for d in desc):
                pending.pop(0)
                continue
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.time() > deadline:
            raise TimeoutError(f"model {name} did not become READY (see {info['logs']}/model_log.log)")
        time.sleep(0.25)


def _is_torchserve(pid: int) -> bool:
    """The recorded pid still runs TorchServe's frontend (pids are reused after a reboot or crash)."""
    try:
        return b"org.pytorch.serve.ModelServer" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the record


def load_state(workdir: Path) -> Dict[str, Any]:
    state = Path(workdir) / STATE
    if not state.is_file():
        raise FileNotFoundError(f"no server recorded in {workdir} ({STATE} missing)")
    return json.loads(state.read_text())


def stop(workdir: Path, timeout: float = 60.0) -> bool:
    """Stop the server recorded in ``workdir`` by its pid and wait until its ports are free."""
    try:
        info = load_state(workdir)
    except FileNotFoundError:
        return False
    pid, host = int(info["pid"]), info["host"]
    if pid_alive(pid) and not _is_torchserve(pid):
        logger.warning("pid %d is no longer TorchServe; not signalling it", pid)
        pid = -1
    if pid > 0 and pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while pid > 0 and pid_alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    if pid > 0 and pid_alive(pid):
        logger.warning("TorchServe pid %d ignored SIGTERM; killing it", pid)
        os.kill(pid, signal.SIGKILL)
    while time.time() < deadline + 10 and any(port_in_use(host, p) for p in info["ports"].values()):
        time.sleep(0.1)
    busy = [p for p in info["ports"].values() if port_in_use(host, p)]
    if busy:
        raise RuntimeError(f"ports {busy} still in use after stopping pid {pid}")
    Path(workdir, STATE).unlink(missing_ok=True)
    return True
