"""End-to-end: the demo in Debian chromium via playwright (upload two PNGs, click Score, read the score)."""

from __future__ import annotations

import os

import pytest

from .conftest import free_port

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.mark.browser
def test_demo_in_browser(scorer, pngs, tmp_path):
    if not os.path.isfile(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    from spaces.app_demo import build_demo

    expected = float(scorer.score(pngs["strong"], pngs["ref"]).score[0])
    demo = build_demo(scorer)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    shot = tmp_path / "demo.png"
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            try:
                page = browser.new_page()
                page.goto(url, wait_until="load", timeout=30000)
                page.get_by_role("button", name="Score", exact=True).wait_for(timeout=30000)
                inputs = page.locator("input[type=file]")
                inputs.nth(1).wait_for(state="attached", timeout=30000)
                # last input first: a filled image component may re-render its own file input
                inputs.nth(1).set_input_files(pngs["ref"])
                page.wait_for_timeout(300)
                inputs.nth(0).set_input_files(pngs["strong"])
                page.wait_for_timeout(500)
                page.get_by_role("button", name="Score", exact=True).click()
                page.get_by_text("A-FINE score:").wait_for(timeout=30000)
                value = float(page.locator("input[type=number]").nth(0).input_value())
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()
    finally:
        demo.close()
    assert value == pytest.approx(expected, abs=1e-3)
    assert shot.is_file() and shot.stat().st_size > 1000
