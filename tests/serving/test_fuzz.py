"""Fuzzing the wire contract (issue #14): bodies generated from the request grammar (inputs, target,
method, params, output) and mutated at random (types, nesting, sizes, unicode, numbers at the
edges, raw bytes) against the shared real TorchServe. Every answer is a 2xx, or a 4xx whose body is
JSON with a message; never a 5xx; the workers' pids never change. Seeded and bounded
(``derandomize=True``, a fixed number of examples)."""
from __future__ import annotations

import json
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from explain_serve.serving.methods import METHODS

pytestmark = pytest.mark.serving

EXAMPLES = 300
SHAPES = {"cancer": (30,), "digits": (1, 8, 8)}
FLOATS = st.one_of(st.floats(-3, 3, width=32), st.sampled_from([0.0, -0.0, 1e-45, 3.4e38, -3.4e38, 1e308, 1e-308]),
                   st.integers(-2**63, 2**63))
ODD = st.one_of(st.none(), st.booleans(), st.text(max_size=12), st.integers(-2**70, 2**70),
                st.floats(allow_nan=True, allow_infinity=True), st.lists(st.integers(), max_size=3),
                st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
PARAM_NAMES = sorted({p.name for m in METHODS.values() for p in m.params}) + ["n_steps ", "ñ", ""]


def _nested(shape, leaf):
    if not shape:
        return leaf
    return st.lists(_nested(shape[1:], leaf), min_size=shape[0], max_size=shape[0])


def _mutated_shape(shape):
    """The right shape, or one axis resized / an extra or missing level of nesting."""
    return st.one_of(st.just(shape), st.tuples(*[st.sampled_from([d, 0, 1, d - 1, d + 1]) for d in shape]),
                     st.just(shape[1:]), st.just(shape + (1,)))


@st.composite
def inputs(draw, model):
    if model == "sentiment":
        return draw(st.one_of(st.text(max_size=40), st.text("good bad film plot great awful ", max_size=40),
                              st.lists(st.integers(-5, 80), max_size=20), st.lists(st.text(max_size=3), max_size=4), ODD))
    shape = SHAPES[model] if draw(st.integers(0, 9)) > 2 else draw(_mutated_shape(SHAPES[model]))
    value = draw(_nested(shape, FLOATS if draw(st.integers(0, 9)) > 1 else st.one_of(FLOATS, ODD)))
    if model == "cancer" and draw(st.booleans()):  # the named-feature form, with some names wrong
        value = draw(st.dictionaries(st.sampled_from([f"x{i}" for i in range(32)] + ["mean radius", "é"]), FLOATS,
                                     max_size=31))
    return value if draw(st.integers(0, 9)) else draw(ODD)


@st.composite
def bodies(draw):
    model = draw(st.sampled_from(["cancer", "digits", "sentiment"]))
    body = {}
    if draw(st.integers(0, 9)):
        body["inputs"] = draw(inputs(model))
    if draw(st.booleans()):
        body["target"] = draw(st.one_of(st.integers(-1, 10), st.just("predicted"))) if draw(st.integers(0, 4)) else draw(ODD)
    if draw(st.booleans()):
        body["method"] = draw(st.sampled_from(sorted(METHODS))) if draw(st.integers(0, 9)) else draw(ODD)
    if draw(st.integers(0, 2)) == 0:
        params = draw(st.dictionaries(st.sampled_from(PARAM_NAMES),
                                      st.one_of(st.integers(-2, 300), st.floats(-1, 12), ODD,
                                                st.sampled_from(["zeros", "mean", "blur", "pad", "kmeans", "riemann_left",
                                                                 "gausslegendre", "vargrad"]),
                                                st.lists(st.integers(-1, 9), max_size=4)),
                                      max_size=3))
        body["params"] = params if draw(st.integers(0, 9)) else draw(ODD)
    if draw(st.integers(0, 3)) == 0:
        body["output"] = draw(st.one_of(st.fixed_dictionaries({"heatmap": st.booleans()}), ODD))
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.text(min_size=1, max_size=6))] = draw(ODD)
    raw = json.dumps(body, allow_nan=True).encode()
    mutation = draw(st.integers(0, 19))
    if mutation == 0:  # truncated or spliced bytes
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut] + draw(st.binary(max_size=8))
    elif mutation == 1:  # a different JSON value at the top
        raw = json.dumps(draw(ODD)).encode()
    route = draw(st.sampled_from(["explanations", "predictions"]))
    return model, route, raw


def _pids(served):
    pids = {}
    for name in ("cancer", "digits", "sentiment"):
        req = urllib.request.Request(f"{served['endpoints']['management']}/models/{name}",
                                     headers={"Authorization": f"Bearer {served['keys']['management']}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            pids[name] = [w["pid"] for w in json.loads(r.read())[0]["workers"]]
    return pids


def test_fuzzed_bodies_get_2xx_or_json_4xx_and_workers_live(served, client):
    before = _pids(served)
    seen = {"2xx": 0, "4xx": 0}

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(bodies())
    def check(case):
        model, route, raw = case
        status, body = client.request(f"/{route}/{model}", raw)
        assert status < 500, (status, body, raw[:300])
        if status >= 400:
            assert isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"], (status, body)
            seen["4xx"] += 1
        else:
            seen["2xx"] += 1

    check()
    assert _pids(served) == before
    assert seen["2xx"] > 20 and seen["4xx"] > 100, seen  # the grammar reaches both sides of the contract
