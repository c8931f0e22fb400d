"""Install as users do: build the wheel, install it (not editable) in a fresh virtual environment,
then, from a folder outside the repository, archive an eager model with the installed console
script, serve it and get one explanation. By default the fresh environment takes its dependencies
from this one (installing torch and TorchServe again takes minutes); ``EXPLAIN_SERVE_FULL_INSTALL=1``
installs ``wheel[serve]`` with its dependencies from the index, as a user does. Also: the repository's top-level
``handlers/`` are byte-identical copies of the package's entry files."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from explain_serve import handlers

ROOT = Path(__file__).resolve().parents[2]
FULL_ENV = "EXPLAIN_SERVE_FULL_INSTALL"  # 1: install the dependencies too (about 10 min on a busy 2-core machine)

MODEL = '''
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x):
        return self.net(x)


if __name__ == "__main__":
    torch.manual_seed(0)
    torch.save(Tiny().state_dict(), "tiny.pt")
'''


def test_top_level_handlers_are_copies_of_the_package_entry_files():
    for name in handlers.FILES.values():
        assert (ROOT / "handlers" / name).read_bytes() == (handlers.DIR / name).read_bytes(), name


def _run(cmd, cwd, env, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.mark.install
@pytest.mark.serving
def test_wheel_in_a_fresh_venv_archives_serves_and_explains(tmp_path):
    if shutil.which("java") is None:
        pytest.skip("TorchServe needs Java")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["TMPDIR"] = str(tmp_path)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
         tmp_path, env)
    wheel, = dist.glob("explain_serve-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    py, cli = venv / "bin" / "python", venv / "bin" / "explain-serve"
    if os.environ.get(FULL_ENV):  # what a user runs: the wheel and its dependencies from the index
        _run([str(py), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), f"{wheel}[serve]"], tmp_path, env)
    else:  # the wheel alone; its dependencies are this environment's (a .pth line: not its editable checkout)
        _run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], tmp_path, env)
        site, = (venv / "lib").glob("python3*/site-packages")
        deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
        (site / "explain_serve_test_deps.pth").write_text("\n".join(deps) + "\n")
        check = subprocess.run([str(py), "-m", "pip", "check"], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert "explain-serve" not in check.stdout.lower(), check.stdout  # its declared requirements are met

    work = tmp_path / "user"
    work.mkdir()
    (work / "tiny.py").write_text(textwrap.dedent(MODEL))
    where = _run([str(py), "-c", "import explain_serve, sys; print(explain_serve.__file__)"], work, env)
    assert Path(where.strip()).is_relative_to(venv), where  # the installed package, not the checkout
    _run([str(py), "tiny.py"], work, env)
    out = _run([str(cli), "archive", "tiny", "--model", "tiny.py", "--weights", "tiny.pt", "--kind", "tabular",
                "--model-store", "store"], work, env)
    assert json.loads(out.strip().splitlines()[-1])["archive"].endswith("tiny.mar")
    _run([str(cli), "serve", "--model-store", "store", "--workdir", "wd", "--batch-size", "1"], work, env)
    try:
        out = _run([str(cli), "explain", "tiny", "--inputs", "[0.5, -1.0, 2.0, 0.25]", "--target", "1",
                    "--workdir", "wd"], work, env)
    finally:
        stopped = _run([str(cli), "stop", "--workdir", "wd"], work, env)
    body = json.loads(out)
    assert body["method"] == "integrated_gradients" and body["target"] == 1 and len(body["attributions"]) == 4
    # completeness against the model computed here: sum of attributions = f(x)[1] - f(0)[1] (+ the delta)
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("tiny_installed", work / "tiny.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.Tiny()
    model.load_state_dict(torch.load(work / "tiny.pt", weights_only=True))
    with torch.no_grad():
        gap = float(model(torch.tensor([[0.5, -1.0, 2.0, 0.25]]))[0, 1] - model(torch.zeros(1, 4))[0, 1])
    assert abs(sum(body["attributions"]) - gap) < 1e-3 + abs(gap) * 1e-2
    assert json.loads(stopped)["stopped"] is True
