"""The viewer page in a real headless Chromium against a real TorchServe (through ``explain-serve view``).

For each kind: choose the model, give an input, explain, and check what is drawn against the
server's own answer to the same request (heat map pixels, token colours, bar order), with no
console errors. Compare mode with two versions shows the audit's agreement; a label that is HTML is
shown as text and opens no dialog; no answer to the browser contains a server key. A screenshot per
case is kept under the session's temporary folder (``viewer_screenshots*``).
"""
from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest

from explain_serve.audit.agreement import agreement
from tests.serving.viewer_server import XSS_FEATURE, XSS_LABEL, viewer  # noqa: F401  (fixture)

pytestmark = pytest.mark.serving
expect = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the [test] extra)").expect
RESOURCE_ERROR = "Failed to load resource"  # Chromium's console line for any 4xx answer


@pytest.fixture(scope="session")
def shots(tmp_path_factory):
    return tmp_path_factory.mktemp("viewer_screenshots")


@pytest.fixture
def ui(page, viewer, shots, request):
    """The page loaded; dialogs and responses recorded; on teardown, no key in any response body."""
    page.dialogs, responses = [], []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.on("response", lambda r: responses.append(r))
    page.goto(viewer["url"] + "/")
    page.wait_for_selector("body[data-ready=true]")
    yield page
    page.screenshot(path=str(shots / f"{request.node.name}.png"), full_page=True)
    bodies = []
    for r in responses:
        try:
            bodies.append(r.body().decode("utf-8", "replace"))
        except Exception:  # a response without a body (e.g. a redirect)
            continue
    assert bodies
    for key in viewer["keys"].values():
        assert not any(key in b for b in bodies)
    assert page.dialogs == []


def choose(page, model, kind):
    page.get_by_test_id("model-select").select_option(model)
    expect(page.get_by_test_id("model-summary")).to_have_text(re.compile(f"^{model} [^:]+: {kind} model"))


def explain(page):
    """Click and wait until the page has drawn the answer or the error (the page counts finished requests)."""
    done = int(page.locator("body").get_attribute("data-explained") or 0)
    page.get_by_test_id("explain-button").click()
    page.wait_for_selector(f"body[data-explained='{done + 1}']")


def digit_png(viewer_store) -> bytes:
    from PIL import Image

    x = np.load(viewer_store / "reference.npy")[0, 0]  # (8, 8) in [0, 1]
    img = Image.fromarray(np.round(x * 255).astype(np.uint8), mode="L").resize((64, 64), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_image_heatmap(ui, viewer, store):
    png = digit_png(store / "build" / "digits")
    choose(ui, "digits", "image")
    ui.get_by_test_id("input-file").set_input_files(files=[{"name": "digit.png", "mimeType": "image/png", "buffer": png}])
    ui.wait_for_selector("#image-preview[data-loaded=true]")
    explain(ui)
    status, want = viewer["client"].explain("digits", {"inputs": base64.b64encode(png).decode()})
    assert status == 200
    assert ui.get_by_test_id("prediction").inner_text().startswith(f"Prediction: {want['prediction']['label']}")
    attr = np.asarray(want["attributions"]).sum(0)  # (8, 8): channels summed, as drawn
    overlay = ui.get_by_test_id("heatmap-overlay")
    pixels = lambda: np.asarray(overlay.evaluate(  # noqa: E731
        "c => Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)")).reshape(8, 8, 4)
    px = pixels()
    assert np.abs(px[..., 3] - np.round(255 * np.abs(attr) / np.abs(attr).max())).max() <= 1
    visible = px[..., 3] >= 64  # (canvas colours are stored premultiplied: exact only where opaque enough)
    assert (px[(attr > 0) & visible][:, 0] > 200).all() and (px[(attr > 0) & visible][:, 2] < 60).all()  # red for
    assert (px[(attr < 0) & visible][:, 2] > 160).all() and (px[(attr < 0) & visible][:, 0] < 50).all()  # blue against
    ui.get_by_test_id("sign").select_option("positive")
    px = pixels()
    assert (px[attr <= 0][:, 3] == 0).all() and px[attr > 0][:, 3].max() == 255
    ui.get_by_test_id("opacity").fill("100")
    i, j = np.unravel_index(np.argmax(attr), attr.shape)
    view = ui.get_by_test_id("heatmap")
    assert view.get_attribute("data-drawn") == "positive:100"
    r, g, b, _ = view.evaluate(f"c => Array.from(c.getContext('2d').getImageData("
                               f"Math.floor(({j} + 0.5) * c.width / 8), Math.floor(({i} + 0.5) * c.height / 8), 1, 1).data)")
    assert (r, g, b) == (214, 39, 40)  # the strongest cell, fully opaque: pure red over the digit
    assert float(ui.get_by_test_id("delta").locator("b").inner_text()) == pytest.approx(want["convergence_delta"], abs=1e-4)
    assert ui.get_by_test_id("elapsed").inner_text().endswith(" ms")
    ui.get_by_test_id("sign").select_option("all")  # the default view, for the screenshot
    ui.get_by_test_id("opacity").fill("70")
    assert ui.console_errors == []


def test_text_tokens(ui, viewer):
    text = "the acting was superb and fun"
    choose(ui, "sentiment", "text")
    ui.get_by_test_id("input-text").fill(text)
    explain(ui)
    status, want = viewer["client"].explain("sentiment", {"inputs": text, "method": "layer_integrated_gradients"})
    assert status == 200
    tokens = ui.get_by_test_id("token")
    assert tokens.all_inner_texts() == [t["token"] for t in want["tokens"]]
    scores = [float(s) for s in tokens.evaluate_all("els => els.map(e => e.dataset.score)")]
    assert scores == pytest.approx([t["score"] for t in want["tokens"]], rel=1e-6)
    colours = tokens.evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
    top = np.abs(scores).max()
    for colour, score in zip(colours, scores):
        rgba = [float(v) for v in re.findall(r"[\d.]+", colour)] + [1.0]  # rgb() when fully opaque
        assert rgba[:3] == ([214, 39, 40] if score >= 0 else [31, 119, 180]), (colour, score)
        assert rgba[3] == pytest.approx(abs(score) / top, abs=2e-3)  # opacity: the score over the largest
    assert ui.get_by_test_id("legend").is_visible()
    assert ui.console_errors == []


def test_tabular_bars(ui, viewer):
    choose(ui, "cancer", "tabular")
    assert ui.get_by_test_id("input-features").locator("input").count() == 30
    explain(ui)
    status, d = viewer["client"].describe("cancer")
    status, want = viewer["client"].explain("cancer", {"inputs": d["input"]["example"]})
    assert status == 200
    bars = ui.get_by_test_id("feature-bar")
    names = bars.evaluate_all("els => els.map(e => e.dataset.feature)")
    assert names == sorted(want["features"], key=lambda n: -abs(want["features"][n]))  # sorted by magnitude
    signs = bars.evaluate_all("els => els.map(e => e.firstChild.className)")
    assert signs == [f"fill {'pos' if want['features'][n] >= 0 else 'neg'}" for n in names]
    widths = bars.evaluate_all("els => els.map(e => e.firstChild.getBoundingClientRect().width / e.getBoundingClientRect().width)")
    assert widths[0] == pytest.approx(0.5, abs=0.01) and widths == sorted(widths, reverse=True)
    probs = [float(p) for p in ui.get_by_test_id("probability").evaluate_all("els => els.map(e => e.dataset.probability)")]
    assert sorted(probs, reverse=True) == pytest.approx(sorted(want["prediction"]["probabilities"], reverse=True))
    assert ui.console_errors == []


def test_compare_two_versions(ui, viewer):
    choose(ui, "cancer", "tabular")
    ui.get_by_test_id("compare-toggle").check()
    assert ui.get_by_test_id("version-select-b").input_value() == "2.0"
    explain(ui)
    ui.get_by_test_id("agreement").wait_for()
    runs = ui.get_by_test_id("run")
    assert runs.count() == 2
    titles = [runs.nth(i).locator("h2").inner_text() for i in range(2)]
    assert titles == ["A: cancer 1.0 · integrated_gradients", "B: cancer 2.0 · integrated_gradients"]
    status, d = viewer["client"].describe("cancer")
    answers = []
    for version in ("1.0", "2.0"):
        s, ans = viewer["client"].request(f"/explanations/cancer/{version}", {"inputs": d["input"]["example"],
                                                                             "target": answers[0]["target"] if answers else "predicted"})
        assert s == 200
        answers.append(ans)
    expected = agreement(answers[0]["attributions"], answers[1]["attributions"], 10)
    cells = ui.get_by_test_id("agreement").locator("td[data-metric]")
    shown = dict(zip(cells.evaluate_all("els => els.map(e => e.dataset.metric)"),
                     map(float, cells.evaluate_all("els => els.map(e => e.dataset.value)"))))
    assert shown == pytest.approx(expected)
    assert ui.console_errors == []


def test_html_label_is_text_and_opens_no_dialog(ui, viewer):
    choose(ui, "xss", "tabular")
    assert XSS_LABEL in ui.get_by_test_id("target-select").inner_text()
    for i, value in enumerate(("0.5", "-1.5")):
        ui.get_by_test_id("input-features").locator("input").nth(i).fill(value)
    explain(ui)
    prediction = ui.get_by_test_id("prediction")
    assert XSS_LABEL in prediction.inner_text()
    assert XSS_FEATURE in ui.get_by_test_id("attribution").inner_text()
    assert ui.locator("img").count() == 0 and ui.locator("b:text('bold')").count() == 0
    ui.get_by_test_id("target-select").select_option("0")
    explain(ui)
    assert f"Attribution for {XSS_LABEL}" in ui.get_by_test_id("attribution").inner_text()
    assert ui.locator("img").count() == 0
    assert ui.console_errors == []  # dialogs are checked by the fixture


def test_errors_are_shown(ui, viewer):
    choose(ui, "cancer", "tabular")
    ui.get_by_test_id("method-select").select_option("integrated_gradients")
    ui.get_by_test_id("params-form").locator("[data-param=n_steps]").fill("100000")
    ui.get_by_test_id("explain-button").click()  # refused by the page: the model's limit is the bound
    assert ui.get_by_test_id("error").inner_text() == "n_steps must be between 1 and 256 for this model; got 100000"
    ui.get_by_test_id("params-form").locator("[data-param=n_steps]").fill("16")
    ui.locator("#json-box summary").click()
    ui.get_by_test_id("use-json").check()
    ui.get_by_test_id("input-json").fill(json.dumps([1.0, 2.0, 3.0]))
    explain(ui)  # refused by the server: its message is shown
    assert ui.get_by_test_id("error").inner_text() == "400: 'inputs' has shape [3]; expected [30]"
    assert [e for e in ui.console_errors if RESOURCE_ERROR not in e] == []
