"""The demo app (afine_apps.demo): launched in-process on 127.0.0.1 and called through gradio_client."""

from __future__ import annotations

import math
import os

import pytest

from .conftest import ROOT, free_port

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
    from afine_apps.demo import build_demo

    demo = build_demo(scorer)
    url = _launch(demo)
    yield url
    demo.close()


compare_url = demo_url  # the A vs B tab is part of the demo


def test_demo_score_via_client_equals_scorer(demo_url, scorer, pngs):
    client = Client(demo_url, verbose=False)
    result = client.predict(handle_file(pngs["strong"]), handle_file(pngs["ref"]), False, api_name="/score")
    expected = scorer.score(pngs["strong"], pngs["ref"])
    assert len(result) == 7
    for value, field in zip(result[:5], FIELDS):
        # shown to 4 decimals
        assert value == round(float(getattr(expected, field)[0]), 4), field
    assert f"{float(expected.score[0]):.4f}" in result[5]
    slider = result[6]
    assert len(slider) == 2 and all(os.path.isfile(p) for p in slider)


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
    assert n == round(n, 4)


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
    from afine_apps.compare import compare_pair

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


def test_rank_gallery_via_client_sorted_with_csv(demo_url, scorer, gallery_pngs):
    names = ("blurred", "noisier", "clean")
    client = Client(demo_url, verbose=False)
    table, chart, csv_path = client.predict([handle_file(gallery_pngs[n]) for n in names],
                                            handle_file(gallery_pngs["reference"]), False, api_name="/rank")
    # independent: each candidate scored on its own (no shared reference encoding), then sorted
    own = {n: float(scorer.score(gallery_pngs[n], [gallery_pngs["reference"]]).score[0]) for n in names}
    expected = sorted(names, key=own.get)
    rows = table["data"]
    assert [r[1] for r in rows] == [f"{n}.png" for n in expected]
    assert [r[0] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r[2] == pytest.approx(own[r[1][:-4]], abs=1e-4)
    assert [row[0] for row in chart["data"]] == [f"{i}. {n}.png" for i, n in enumerate(expected, 1)]
    with open(csv_path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    assert lines[0] == "rank,name,score,score_raw,fidelity,naturalness_distorted,naturalness_reference"
    assert [ln.split(",")[1] for ln in lines[1:]] == [f"{n}.png" for n in expected]
    assert float(lines[1].split(",")[2]) == pytest.approx(own[expected[0]], abs=1e-4)


def test_rank_gallery_encodes_the_reference_once(scorer, gallery_pngs):
    from afine_apps.gallery import rank_gallery

    calls = []
    original = scorer.model.encode_reference

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    scorer.model.encode_reference = counting
    try:
        rows = rank_gallery(scorer, [gallery_pngs[n] for n in ("blurred", "noisier", "clean")],
                            gallery_pngs["reference"])
    finally:
        del scorer.model.encode_reference
    assert len(calls) == 1 and len(rows) == 3
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert [r["score"] for r in rows] == sorted(r["score"] for r in rows)


def test_uploads_over_the_pixel_limit_are_refused_before_decoding(demo_url, pngs, monkeypatch):
    import PIL.Image

    monkeypatch.setenv("AFINE_MAX_IMAGE_PIXELS", str(32 * 32))
    decoded = []
    original = PIL.Image.Image.load

    def spy(self):
        decoded.append(self.size)
        return original(self)

    monkeypatch.setattr(PIL.Image.Image, "load", spy)
    client = Client(demo_url, verbose=False)
    with pytest.raises(Exception, match="exceeds the limit of 1,024"):
        client.predict(handle_file(pngs["mild"]), handle_file(pngs["ref"]), False, api_name="/score")
    assert (64, 64) not in decoded  # refused from the header, never decoded


def test_unreadable_upload_names_the_problem(demo_url, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 64)
    client = Client(demo_url, verbose=False)
    with pytest.raises(Exception, match=r"broken\.png: (not a recognised image|cannot|file is truncated)"):
        client.predict(handle_file(str(bad)), api_name="/naturalness")


def test_queue_has_a_concurrency_limit(scorer, monkeypatch):
    from afine_apps.demo import build_demo

    monkeypatch.setenv("AFINE_CONCURRENCY", "2")
    demo = build_demo(scorer)
    assert demo._queue.default_concurrency_limit == 2
    fns = list(demo.fns.values()) if isinstance(demo.fns, dict) else list(demo.fns)
    limits = {f.api_name: f.concurrency_limit for f in fns if f.api_name in ("score", "compare", "rank", "naturalness")}
    assert set(limits) == {"score", "compare", "rank", "naturalness"}
    assert all(v in (2, "default") for v in limits.values()), limits


def test_parser_defaults_follow_env(monkeypatch):
    from afine_apps.launching import base_parser

    for name in ("GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "SYSTEM", "AFINE_MODEL", "AFINE_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    args = base_parser("x", port=7861).parse_args([])
    assert (args.port, args.host, args.model, args.share) == (7861, "127.0.0.1", None, False)
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7000")
    monkeypatch.setenv("AFINE_MODEL", "org/afine")
    args = base_parser("x", port=7861).parse_args([])
    assert (args.host, args.port, args.model) == ("0.0.0.0", 7000, "org/afine")


def test_demo_main_loads_the_given_model(monkeypatch, tiny_model_dir):
    import gradio as gr

    import afine_apps.demo as demo_module

    calls = []
    monkeypatch.setattr(demo_module, "launch", lambda demo, args, **kw: calls.append((demo, args)))
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    demo_module.main(["--model", str(tiny_model_dir), "--device", "cpu", "--examples-dir", str(ROOT / "spaces" / "afine-demo")])
    (demo, args), = calls
    assert isinstance(demo, gr.Blocks)
    assert (args.model, args.port, args.share, args.host) == (str(tiny_model_dir), 7860, False, "127.0.0.1")


def test_building_the_apps_writes_nothing_into_the_package(scorer):
    import afine_apps
    from afine_apps.demo import build_demo

    build_demo(scorer)
    folder = os.path.dirname(afine_apps.__file__)
    assert not [n for n in os.listdir(folder) if n.endswith(".pyi")]


def test_several_clients_at_once_get_their_own_results(demo_url, scorer, pngs):
    """Four clients in parallel (the queue runs them one at a time): each gets the numbers of its own pair."""
    import threading

    jobs = [("mild", "ref"), ("strong", "ref"), ("dis2", "ref2"), ("ref", "mild")]
    results, errors = {}, []

    def run(i, dis, ref):
        try:
            results[i] = Client(demo_url, verbose=False).predict(handle_file(pngs[dis]), handle_file(pngs[ref]), False,
                                                                 api_name="/score")[0]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, d, r)) for i, (d, r) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for i, (dis, ref) in enumerate(jobs):
        assert results[i] == round(float(scorer.score(pngs[dis], pngs[ref]).score[0]), 4), jobs[i]
