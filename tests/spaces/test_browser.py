"""End-to-end in Debian chromium via playwright: the demo's example click shows a score, and the gallery tab
ranks three candidates (a blurred, a noisier and a clean copy of the reference) in the expected order."""

from __future__ import annotations

import os

import pytest

from .conftest import SPACES, free_port

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser_page(scorer):
    """The demo (with the Space's examples) served on 127.0.0.1 and a fresh chromium page on it."""
    if not os.path.isfile(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    from afine_apps.demo import build_demo, example_pairs

    demo = build_demo(scorer, examples=example_pairs(SPACES / "afine-demo"))
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            try:
                def new_page():
                    page = browser.new_page()
                    page.goto(url, wait_until="load", timeout=30000)
                    page.get_by_role("button", name="Score", exact=True).wait_for(timeout=30000)
                    return page

                yield new_page
            finally:
                browser.close()
    finally:
        demo.close()


@pytest.mark.browser
def test_example_click_shows_the_score(browser_page, scorer, tmp_path):
    """The number boxes are empty (not 0: a perfect score on a lower-is-better scale) until a result arrives;
    clicking the example (gradio's cached copy, which the upload boundary allows) fills them."""
    examples = SPACES / "afine-demo" / "examples"
    expected = float(scorer.score(str(examples / "distorted.png"), str(examples / "reference.png")).score[0])
    page = browser_page()
    numbers = page.locator("input[type=number]")
    numbers.first.wait_for(timeout=30000)
    assert numbers.count() == 5  # the visible tab's five result boxes
    assert [numbers.nth(i).input_value() for i in range(5)] == [""] * 5
    page.get_by_role("tab", name="Naturalness only").click()
    natural = page.locator("input[type=number]:visible")
    natural.first.wait_for(timeout=30000)
    assert [natural.nth(i).input_value() for i in range(natural.count())] == [""]
    page.get_by_role("tab", name="Score a pair").click()
    page.locator("[data-testid=dataset-cell-0-0]").click()
    page.get_by_text("A-FINE score:").wait_for(timeout=60000)
    value = float(page.locator("input[type=number]").nth(0).input_value())
    assert value == round(expected, 4)
    assert f"{expected:.4f}" in page.get_by_text("A-FINE score:").inner_text()
    page.screenshot(path=str(tmp_path / "example.png"), full_page=True)
    assert (tmp_path / "example.png").stat().st_size > 1000


@pytest.mark.browser
def test_gallery_ranks_clean_blurred_noisier(browser_page, scorer, gallery_pngs):
    """The tiny seeded model's order is fixed: independent per-pair scores put the clean copy (fidelity distance
    0) first, then the blurred, then the noisier copy, with clear gaps; the page must show exactly that."""
    names = ("blurred", "noisier", "clean")
    own = {n: float(scorer.score(gallery_pngs[n], [gallery_pngs["reference"]]).score[0]) for n in names}
    expected = sorted(names, key=own.get)
    assert expected == ["clean", "blurred", "noisier"], own
    assert min(b - a for a, b in zip(sorted(own.values()), sorted(own.values())[1:])) > 0.1, own

    page = browser_page()
    page.get_by_role("tab", name="Rank a gallery").click()
    files = page.locator("input[type=file][multiple]")
    files.wait_for(state="attached", timeout=30000)
    files.set_input_files([gallery_pngs[n] for n in names])
    page.wait_for_timeout(500)
    ref_input = page.locator("input[type=file]").nth(3)
    ref_input.set_input_files(gallery_pngs["reference"])
    page.wait_for_timeout(500)
    page.get_by_role("button", name="Rank", exact=True).click()
    block = page.locator(".block", has_text="Ranking (best first)")
    block.get_by_text("noisier.png").first.wait_for(timeout=60000)
    text = block.inner_text()
    positions = [text.index(f"{n}.png") for n in expected]
    assert positions == sorted(positions), text
    assert f"{round(own['clean'], 4)}" in text


@pytest.mark.browser
def test_html_in_names_is_shown_not_rendered(browser_page, pngs):
    """A candidate name holding HTML appears as text in the verdict; no element is created from it."""
    page = browser_page()
    page.get_by_role("tab", name="A vs B").click()
    uploads = page.locator("input[type=file]:not([multiple])")
    uploads.nth(3).wait_for(state="attached", timeout=30000)
    for k, name in ((2, "mild"), (3, "strong"), (4, "ref")):  # A, B, reference (after the first tab's two)
        uploads.nth(k).set_input_files(pngs[name])
        page.wait_for_timeout(300)
    name_a = page.get_by_label("Name of A")
    name_a.fill('<img id="injected" src="x"><b id="bold">bold</b>')
    page.get_by_role("button", name="Compare", exact=True).click()
    page.get_by_text("P(A better)").wait_for(timeout=60000)
    assert page.locator("#injected").count() == 0 and page.locator("#bold").count() == 0
    assert '<b id="bold">bold</b>' in page.get_by_text("P(A better)").locator("xpath=ancestor::div[1]").inner_text() \
        or '<b id="bold">bold</b>' in page.content().replace("&lt;", "<").replace("&gt;", ">")
