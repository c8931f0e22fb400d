"""report.html in a real headless Chromium: it renders offline with no console errors, the verdict,
gates, charts and disagreements are visible; a screenshot is kept for a person to look at."""
import json
import os

import pytest

from explain_serve.cli import main

SHOTS = os.environ.get("EXPLAIN_SERVE_SCREENSHOTS")  # a folder to keep the screenshots in


@pytest.mark.parametrize("kind,data", [("digits", "npy"), ("lin", "csv"), ("sentiment", "jsonl")])
def test_report_renders_in_chromium(kind, data, request, page, tmp_path):
    versions = request.getfixturevalue(kind)
    b = versions["swapped"] if kind == "lin" else versions["b"]
    argv = ["audit", "--a", str(versions["a"]), "--b", str(b), "--data", str(versions[data]), "--out", str(tmp_path),
            "--no-progress", "--limit", "12", "--fail-under", "spearman=0.95", "cosine=0.5"]
    rc = main(argv)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert rc == (0 if summary["passed"] else 1)
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto((tmp_path / "report.html").as_uri())
    verdict = page.get_by_test_id("verdict")
    verdict.wait_for(state="visible")
    assert verdict.inner_text() == ("PASSED" if summary["passed"] else "FAILED")
    assert page.get_by_test_id("gate").count() == 2
    assert page.locator("[data-testid=histograms] svg").count() == 5
    assert page.locator("[data-testid=global] svg rect").count() > 0
    cards = page.get_by_test_id("disagreement")
    assert cards.count() == len(summary["top_disagreements"]) > 0
    if kind == "digits":  # input, A and B heat maps: decoded PNGs with a size
        images = cards.first.locator("img")
        assert images.count() == 3
        assert all(images.nth(i).evaluate("e => e.complete && e.naturalWidth > 0") for i in range(3))
    elif kind == "sentiment":
        assert cards.first.locator("mark").count() > 0
    else:
        assert cards.first.locator("svg rect").count() > 0
    assert page.console_errors == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests  # nothing from the network
    shot = (os.path.join(SHOTS, f"report_{kind}.png") if SHOTS else str(tmp_path / "report.png"))
    page.screenshot(path=shot, full_page=True)
    assert os.path.getsize(shot) > 10_000
