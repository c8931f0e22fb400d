"""One real TorchServe for the serving tests: the example archives plus a TorchScript tabular model
archived with only the CLI flags, on free loopback ports, its own TMPDIR and logs, stopped by PID."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from explain_serve.client import Client
from explain_serve.examples import EXAMPLES, LLM_EXAMPLES, build_examples, load_example_model
from explain_serve.serving import server as ts_server
from explain_serve.serving.server import read_token

MAX_RESPONSE = 300_000  # small, so the "response over max_response_size" row is cheap to reach
HAS_LLM = importlib.util.find_spec("transformers") is not None  # the [llm] extra
MODELS = ["digits", "cancer", "sentiment", "cancer_ts"] + (["tiny_lm", "hf_text"] if HAS_LLM else [])


def _need_java():
    if shutil.which("java") is None:
        pytest.skip("TorchServe needs Java")


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """Example archives (trained here) + cancer_ts.mar, archived from a TorchScript file with only flags."""
    from explain_serve.cli import main

    store = tmp_path_factory.mktemp("model_store")
    build_examples(store)
    scripted = torch.jit.script(load_example_model("cancer", store / "build" / "cancer"))
    ts_file = store / "build" / "cancer_ts.pt"
    scripted.save(str(ts_file))
    assert main(["archive", "cancer_ts", "--model", str(ts_file), "--kind", "tabular", "--model-store", str(store)]) == 0
    if HAS_LLM:  # Hugging Face directories: the tiny_lm example and a random 1-layer BERT classifier
        from tests.hf_models import bert_classifier_dir

        build_examples(store, LLM_EXAMPLES)
        bert = bert_classifier_dir(store / "build" / "hf_text")
        assert main(["archive", "hf_text", "--model", str(bert), "--kind", "text", "--model-store", str(store)]) == 0
    return store


@pytest.fixture(scope="session")
def models(store):
    """The trained models in-process (the oracle for served answers)."""
    return {name: load_example_model(name, store / "build" / name) for name in EXAMPLES}


@pytest.fixture(scope="session")
def reference(store):
    return {name: np.load(store / "build" / name / "reference.npy") for name in ("digits", "cancer")}


@pytest.fixture(scope="session")
def served(store, tmp_path_factory):
    """A running TorchServe: batch size 8, 10 ms batch delay, token authorization on."""
    _need_java()
    workdir = tmp_path_factory.mktemp("torchserve")
    info = ts_server.start(store, MODELS, workdir, batch_size=8, max_batch_delay=10, max_response_size=MAX_RESPONSE)
    try:
        info["keys"] = read_token(Path(info["token_file"]))
        yield info
    finally:
        ts_server.stop(workdir)
        assert not any(ts_server.port_in_use(info["host"], p) for p in info["ports"].values())


@pytest.fixture(scope="session")
def client(served):
    c = Client(served["endpoints"]["inference"], served["endpoints"]["grpc"], served["keys"]["inference"])
    yield c
    c.close()
