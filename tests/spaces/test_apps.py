"""Demo and compare apps: launched in-process on 127.0.0.1 and called through gradio_client."""

from __future__ import annotations

import math

import pytest

from .conftest import free_port

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

FIELDS = ("score", "score_raw", "fidelity", "naturalness_distorted", "naturalness_reference")


def _launch(demo):
    port = free_port()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    return url


@pytest.fixture(scope="module")
def demo_url(scorer):
    from spaces.app_demo import build_demo

    demo = build_demo(scorer)
    url = _launch(demo)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def compare_url(scorer):
    from spaces.app_compare import build_compare

    demo = build_compare(scorer)
    url = _launch(demo)
    yield url
    demo.close()


def test_demo_score_via_client_equals_scorer(demo_url, scorer, pngs):
    client = Client(demo_url, verbose=False)
    result = client.predict(handle_file(pngs["strong"]), handle_file(pngs["ref"]), False, api_name="/score")
    expected = scorer.score(pngs["strong"], pngs["ref"])
    assert len(result) == 6
    for value, field in zip(result[:5], FIELDS):
        assert value == pytest.approx(float(getattr(expected, field)[0]), abs=1e-4), field
    assert "lower is better" in result[5]
    assert f"{float(expected.score[0]):.2f}" in result[5]


def test_demo_size_mismatch_is_a_clear_error_and_resize_opt_in(demo_url, scorer, pngs):
    client = Client(demo_url, verbose=False)
    with pytest.raises(Exception) as info:
        client.predict(handle_file(pngs["mild"]), handle_file(pngs["odd"]), False, api_name="/score")
    message = str(info.value)
    assert "Size mismatch" in message and "80x48" in message and "Resize the reference" in message
    result = client.predict(handle_file(pngs["mild"]), handle_file(pngs["odd"]), True, api_name="/score")
    expected = scorer.score(pngs["mild"], [pngs["odd"]], resize_reference=True)
    assert result[0] == pytest.approx(float(expected.score[0]), abs=1e-4)


def test_demo_missing_reference_and_naturalness_path(demo_url, scorer, pngs):
    client = Client(demo_url, verbose=False)
    with pytest.raises(Exception, match="upload the reference"):
        client.predict(handle_file(pngs["mild"]), None, False, api_name="/score")
    n, text = client.predict(handle_file(pngs["dis2"]), api_name="/naturalness")
    assert n == pytest.approx(float(scorer.naturalness(pngs["dis2"])[0]), abs=1e-4)
    assert "lower is more natural" in text


def test_compare_prefers_lower_score_via_client(compare_url, scorer, pngs):
    client = Client(compare_url, verbose=False)
    exp = scorer.score([pngs["mild"], pngs["strong"]], [pngs["ref"], pngs["ref"]])
    s_mild, s_strong = float(exp.score[0]), float(exp.score[1])
    assert s_mild != s_strong
    want = "A" if s_mild < s_strong else "B"
    text, details = client.predict(handle_file(pngs["mild"]), handle_file(pngs["strong"]), handle_file(pngs["ref"]),
                                   False, "mild", "strong", api_name="/compare")
    assert details["preferred"] == want
    assert details["A"]["score"] == pytest.approx(s_mild, abs=1e-4)
    assert details["B"]["score"] == pytest.approx(s_strong, abs=1e-4)
    # swapping the candidates swaps the verdict
    _, swapped = client.predict(handle_file(pngs["strong"]), handle_file(pngs["mild"]), handle_file(pngs["ref"]),
                                False, "strong", "mild", api_name="/compare")
    assert swapped["preferred"] == ("B" if want == "A" else "A")
    assert swapped["preferred_name"] == details["preferred_name"] == ("mild" if s_mild < s_strong else "strong")
    assert "prefers **" + details["preferred_name"] + "**" in text


def test_compare_decomposition_is_consistent(scorer, pngs):
    from spaces.app_compare import compare_pair

    r = compare_pair(scorer, pngs["mild"], pngs["strong"], pngs["ref"])
    out = scorer.score([pngs["mild"], pngs["strong"]], pngs["ref"])
    for j, tag in enumerate("AB"):
        lam = float(out.adaptive_weight[j])
        assert r[tag]["adaptive_weight"] == pytest.approx(lam, rel=1e-6)
        # score_raw = lambda * N_dis + F (independent of the app's own arithmetic)
        assert r[tag]["score_raw"] == pytest.approx(lam * float(out.naturalness_distorted[j]) + float(out.fidelity[j]),
                                                    abs=1e-4)
    diff = float(out.score_raw[1] - out.score_raw[0])
    assert r["p_a_better"] == pytest.approx(0.5 * (1 + math.erf(diff / 2.0)), abs=1e-6)
    assert (r["p_a_better"] > 0.5) == (r["A"]["score_raw"] < r["B"]["score_raw"])


def test_compare_size_mismatch_errors(compare_url, pngs):
    client = Client(compare_url, verbose=False)
    with pytest.raises(Exception, match="Size mismatch: candidate B"):
        client.predict(handle_file(pngs["mild"]), handle_file(pngs["odd"]), handle_file(pngs["ref"]), False, "A", "B",
                       api_name="/compare")


def test_apps_import_without_launching_and_parse_args():
    import spaces.app_compare as c
    import spaces.app_demo as d
    from spaces.launching import base_parser

    args = base_parser("x").parse_args(["--model", "m", "--port", "9999"])
    assert (args.model, args.port, args.share, args.host) == ("m", 9999, False, "127.0.0.1")
    assert callable(d.main) and callable(c.main)


def test_parser_defaults_follow_gradio_env(monkeypatch):
    from spaces.launching import base_parser

    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    monkeypatch.delenv("SYSTEM", raising=False)
    assert base_parser("x", port=7861).parse_args([]).port == 7861
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7000")
    args = base_parser("x", port=7861).parse_args([])
    assert (args.host, args.port) == ("0.0.0.0", 7000)


def test_gradio_space_auto_wrap_does_not_break_on_name_clash(monkeypatch, scorer):
    """gradio does ``import spaces`` and, inside a Space, calls ``spaces.gradio_auto_wrap``: this package must cope."""
    import gradio.block_function as bf

    import spaces
    from spaces.app_demo import build_demo

    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "someone/afine-demo")
    if bf.spaces is not spaces:
        pytest.skip("gradio resolved a different 'spaces' module")
    demo = build_demo(scorer)  # would raise AttributeError without the shim
    fns = list(demo.fns.values()) if isinstance(demo.fns, dict) else list(demo.fns)
    assert any(getattr(f, "api_name", None) == "score" for f in fns)
