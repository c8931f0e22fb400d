"""``--ray``: batches computed by Ray actors (a local Ray of two CPUs) give the single-process summary."""
import json

import pytest

from explain_serve.audit import run_audit

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    try:
        yield
    finally:
        ray.shutdown()


def test_ray_summary_equals_single_process(lin, local_ray, tmp_path):
    args = dict(a=str(lin["a"]), b=str(lin["swapped"]), data=str(lin["csv"]), batch_size=8, progress=False,
                fail_under=["spearman=0.5"])
    single = run_audit(out=str(tmp_path / "single"), **args)
    distributed = run_audit(out=str(tmp_path / "ray"), ray="local", **args)
    assert distributed == single
    assert (tmp_path / "ray" / "examples.csv").read_text() == (tmp_path / "single" / "examples.csv").read_text()
    assert json.loads((tmp_path / "ray" / "summary.json").read_text())["n_examples"] == 40
