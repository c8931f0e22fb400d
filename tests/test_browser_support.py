"""The browser fixture itself: a page renders, test ids are found, console errors are collected."""


def test_page_renders_and_collects_console_errors(page):
    page.set_content(
        "<div data-testid='msg'></div>"
        "<script>document.querySelector('[data-testid=msg]').textContent = 'drawn';"
        "console.error('boom');</script>"
    )
    assert page.get_by_test_id("msg").inner_text() == "drawn"
    assert page.console_errors == ["boom"]
