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
    examples = SPACES / "afine-demo" / "examples"
    expected = float(scorer.score(str(examples / "distorted.png"), str(examples / "reference.png")).score[0])
    page = browser_page()
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
