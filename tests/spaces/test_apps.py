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


# ------------------------------------------------------------------------------- hosting a stranger's requests


import builtins  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

META = {"_type": "gradio.FileData"}


def _http_call(url: str, api: str, data: list) -> tuple[str, str]:
    """Raw HTTP, as a stranger would: POST /gradio_api/call/<api>, then read the event stream.
    Returns ``(event, payload)``: ``("error", message)`` or ``("complete", json text)``."""
    req = urllib.request.Request(url + f"gradio_api/call/{api}", data=json.dumps({"data": data}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        event_id = json.loads(r.read())["event_id"]
    with urllib.request.urlopen(url + f"gradio_api/call/{api}/{event_id}", timeout=120) as r:
        text = r.read().decode()
    event = text.split("event: ", 1)[1].split("\n", 1)[0].strip()
    payload = text.split("data: ", 1)[1].split("\n", 1)[0].strip()
    if event == "error":
        payload = json.loads(payload)["error"]
    return event, payload


@contextmanager
def _open_spy():
    """Records every path given to builtins.open / io.open / os.open / os.stat in this process (the app's threads
    included) while active."""
    seen: list[str] = []
    lock = threading.Lock()
    originals = {"open": builtins.open, "io_open": io.open, "os_open": os.open, "stat": os.stat}

    def record(target):
        if isinstance(target, (str, bytes, os.PathLike)):
            with lock:
                seen.append(os.fsdecode(target))

    def spy_open(file, *args, **kwargs):
        record(file)
        return originals["open"](file, *args, **kwargs)

    def spy_os_open(path, *args, **kwargs):
        record(path)
        return originals["os_open"](path, *args, **kwargs)

    def spy_stat(path, *args, **kwargs):
        record(path)
        return originals["stat"](path, *args, **kwargs)

    builtins.open, io.open, os.open, os.stat = spy_open, spy_open, spy_os_open, spy_stat
    try:
        yield seen
    finally:
        builtins.open, io.open, os.open, os.stat = (originals["open"], originals["io_open"], originals["os_open"],
                                                    originals["stat"])


@pytest.fixture(scope="module")
def server_files(tmp_path_factory):
    """Files a stranger must not reach: a valid PNG, a P6 file with a secret token, a missing path, a folder."""
    from PIL import Image

    d = tmp_path_factory.mktemp("server_private")
    photo = d / "private_photo.png"
    Image.new("RGB", (64, 64), (7, 8, 9)).save(photo)
    token = d / "token.ppm"
    token.write_bytes(b"P6 SECRET_TOKEN_VALUE_0123456789\n")
    (d / "folder").mkdir()
    return {"photo": str(photo), "token": str(token), "missing": str(d / "missing.png"), "folder": str(d / "folder"),
            "dir": str(d)}


@pytest.fixture(scope="module")
def guarded_demo(scorer):
    from afine_apps.demo import build_demo, example_pairs

    demo = build_demo(scorer, examples=example_pairs(ROOT / "spaces" / "afine-demo"))
    url = _launch(demo)
    yield demo, url
    demo.close()


def _attack_forms(path: str) -> list:
    from gradio.utils import get_upload_folder

    upload_dir = get_upload_folder()
    up = os.path.relpath("/", upload_dir)  # "../.." from the upload folder to the root
    traversal = os.path.join(upload_dir, up, path.lstrip("/"))
    return [
        {"path": path},  # bare dict, no meta: gradio itself does not check it
        {"path": path, "meta": META},
        path,  # a plain string
        {"path": "file://" + path, "meta": META},
        "file://" + path,
        {"path": traversal, "meta": META},  # <upload dir>/../../<path>
        {"path": traversal},
        {"path": "uploads/../../../../../../../.." + path, "meta": META},  # relative traversal
        {"path": path, "meta": META, "url": "file://" + path, "orig_name": "x.png"},
    ]


def _endpoint_calls(good: dict, bad) -> list[tuple[str, list]]:
    """Every file input of every endpoint (the examples' hidden one included) carrying ``bad``, the others good."""
    g = good
    return [
        ("score", [bad, g, False]), ("score", [g, bad, False]),
        ("compare", [bad, g, g, False, "A", "B"]), ("compare", [g, bad, g, False, "A", "B"]),
        ("compare", [g, g, bad, False, "A", "B"]),
        ("rank", [[bad], g, False]), ("rank", [[g, bad], g, False]), ("rank", [[g], bad, False]),
        ("naturalness", [bad]),
        ("score_example", [bad, g]), ("score_example", [g, bad]),
    ]


def _upload(url: str, path: str) -> dict:
    """Upload ``path`` as the browser and gradio_client do (POST /gradio_api/upload); returns its FileData."""
    boundary = "afine-test-boundary"
    with open(path, "rb") as fh:
        content = fh.read()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{os.path.basename(path)}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "gradio_api/upload", data=body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        (server_path,) = json.loads(r.read())
    return {"path": server_path, "meta": META, "orig_name": os.path.basename(path)}


def test_server_paths_are_refused_on_every_endpoint_with_one_message(guarded_demo, pngs, server_files):
    """The calls of issue 18 (bare dict, dict with meta, string, file:// URL, traversal) on every file input of every
    endpoint: one identical refusal whether or not the path exists, nothing of the path or the file in it, nothing
    outside the upload cache and the examples opened (or even stat-ed), and nothing served back."""
    from gradio.utils import get_upload_folder

    from afine_apps.upload_guard import REFUSED

    demo, url = guarded_demo
    good = _upload(url, pngs["ref"])
    assert _http_call(url, "naturalness", [good])[0] == "complete"  # the request's own upload is scored
    targets = [server_files[k] for k in ("photo", "token", "missing", "folder")] + ["/dev/zero", "/etc/passwd"]
    messages, events = set(), []
    with _open_spy() as opened:
        # a URL in gradio's own format is fetched by gradio, whose SSRF check refuses loopback: the same message
        for loopback in (url + "gradio_api/file=" + server_files["photo"], "http://127.0.0.1:1/x.png"):
            event, payload = _http_call(url, "naturalness", [{"path": loopback, "meta": META}])
            events.append(("naturalness", loopback, event))
            messages.add(payload)
        for target in targets:
            for form in _attack_forms(target):
                calls = _endpoint_calls(good, form)
                if target != server_files["photo"]:  # the existence oracle: the same message for every other file
                    calls = [c for c in calls if c[0] in ("naturalness", "rank")][:3]
                for api, data in calls:
                    event, payload = _http_call(url, api, data)
                    events.append((api, repr(form)[:60], event))
                    if event == "error":
                        messages.add(payload)
    assert all(e == "error" for *_, e in events), [e for e in events if e[2] != "error"]
    assert messages == {REFUSED}, messages
    assert "/" not in REFUSED and "SECRET" not in REFUSED
    allowed_roots = (os.path.realpath(get_upload_folder()), str((ROOT / "spaces" / "afine-demo").resolve()))
    # (Python source files are read by linecache when gradio prints a refused request's traceback to the log;
    # gradio stats a URL string as a relative path while deciding whether it names one of its static files)
    outside = {p for p in opened if not os.path.realpath(p).startswith(allowed_roots) and not p.endswith(".py")
               and not p.startswith(("http:/", "https:/"))}
    assert not outside, sorted(outside)[:10]
    assert not any(os.path.realpath(p).startswith(server_files["dir"]) or p in ("/dev/zero", "/etc/passwd")
                   for p in opened)
    # the slider and the file route serve nothing of the server's files
    for target in (server_files["photo"], server_files["token"]):
        try:
            with urllib.request.urlopen(url + "gradio_api/file=" + target, timeout=30) as r:
                body = r.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            assert exc.code in (403, 404)
        assert b"SECRET_TOKEN" not in body and not body.startswith(b"\x89PNG")


def test_gradio_client_bare_dict_and_string_paths_are_refused(guarded_demo, pngs, server_files):
    """The exact client call of the issue: Client(url).predict({"path": ...}, {"path": ...}, False, "/score")."""
    from afine_apps.upload_guard import REFUSED

    _, url = guarded_demo
    client = Client(url, verbose=False)
    for target in (server_files["photo"], server_files["missing"]):
        for form in ({"path": target}, target):
            with pytest.raises(Exception) as info:
                client.predict(form, form, False, api_name="/score")
            assert str(info.value) == REFUSED, (form, str(info.value))
        with pytest.raises(Exception, match="not uploaded to this app"):
            client.predict({"path": target}, api_name="/naturalness")
    # the request's own upload still works through the client
    result = client.predict(handle_file(pngs["mild"]), handle_file(pngs["ref"]), False, api_name="/score")
    from gradio.utils import get_upload_folder

    assert all(os.path.realpath(p).startswith(os.path.realpath(get_upload_folder())) for p in result[6])


def test_errors_name_the_upload_not_the_server_path(guarded_demo, tmp_path):
    _, url = guarded_demo
    from gradio.utils import get_upload_folder

    good = tmp_path / "good.png"
    from PIL import Image

    Image.new("RGB", (40, 30)).save(good)
    data = good.read_bytes()
    cut = tmp_path / "my <b>cut photo.png"
    cut.write_bytes(data[: len(data) // 2])
    tiny = tmp_path / "three.bmp"
    tiny.write_bytes(b"BM\x00")
    for path, words in ((cut, ("truncated", "cut")), (tiny, ("three.bmp",))):
        event, message = _http_call(url, "naturalness", [_upload(url, str(path))])
        assert event == "error", message
        assert all(w in message for w in words), message
        assert get_upload_folder() not in message and "/tmp" not in message, message
        assert "AFINE_" not in message and "<b>" not in message, message


def test_text_fields_have_a_server_side_maximum(guarded_demo, pngs):
    from afine_apps.demo import NAME_MAX_LENGTH

    _, url = guarded_demo
    up = _upload(url, pngs["mild"])
    ref = _upload(url, pngs["ref"])
    start = time.perf_counter()
    event, message = _http_call(url, "compare", [up, up, ref, False, "x" * 2_000_000, "B"])
    assert event == "error" and f"at most {NAME_MAX_LENGTH} characters" in message, message
    assert "xxxx" not in message and time.perf_counter() - start < 30
    event, payload = _http_call(url, "compare", [up, up, ref, False, "<img src=x onerror=alert(1)>", "=B"])
    assert event == "complete"
    verdict = json.loads(payload)[0]
    assert "<img" not in verdict and "&lt;img" in verdict


def test_one_model_run_at_a_time_across_endpoints(scorer, pngs, gallery_pngs, monkeypatch):
    """/score, /compare, /rank and /naturalness fired together never overlap inside the model (one shared
    concurrency id), and AFINE_CONCURRENCY=2 lets two run."""
    from afine_apps.demo import build_demo
    from afine_apps.launching import MODEL_QUEUE

    def overlap(concurrency: str | None) -> int:
        if concurrency is None:
            monkeypatch.delenv("AFINE_CONCURRENCY", raising=False)
        else:
            monkeypatch.setenv("AFINE_CONCURRENCY", concurrency)
        demo = build_demo(scorer)
        fns = list(demo.fns.values()) if isinstance(demo.fns, dict) else list(demo.fns)
        assert {f.concurrency_id for f in fns if f.queue} == {MODEL_QUEUE}
        url = _launch(demo)
        active, peak, lock = [0], [0], threading.Lock()
        originals = {"score": scorer.score, "naturalness": scorer.naturalness}

        def slow(name):
            def run(*args, **kwargs):
                with lock:
                    active[0] += 1
                    peak[0] = max(peak[0], active[0])
                try:
                    time.sleep(0.4)
                    return originals[name](*args, **kwargs)
                finally:
                    with lock:
                        active[0] -= 1
            return run

        monkeypatch.setattr(scorer, "score", slow("score"))
        monkeypatch.setattr(scorer, "naturalness", slow("naturalness"))
        try:
            up = {k: _upload(url, pngs[k]) for k in ("mild", "strong", "ref")}
            calls = [("score", [up["mild"], up["ref"], False]), ("compare", [up["mild"], up["strong"], up["ref"], False, "a", "b"]),
                     ("rank", [[up["mild"], up["strong"]], up["ref"], False]), ("naturalness", [up["mild"]])]
            results = {}
            threads = [threading.Thread(target=lambda c=c: results.__setitem__(c[0], _http_call(url, *c))) for c in calls]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
            assert {k: v[0] for k, v in results.items()} == {c[0]: "complete" for c in calls}, results
        finally:
            monkeypatch.setattr(scorer, "score", originals["score"])
            monkeypatch.setattr(scorer, "naturalness", originals["naturalness"])
            demo.close()
        return peak[0]

    assert overlap(None) == 1
    assert overlap("2") == 2


def test_pixel_budget_follows_the_hardware(monkeypatch):
    from afine_apps import launching

    monkeypatch.delenv("AFINE_MAX_IMAGE_PIXELS", raising=False)
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    cores_here = launching.available_cpus()
    assert 1 <= cores_here <= (os.cpu_count() or 1)
    assert launching.max_pixels("cpu") == min(8 << 20, cores_here << 20)
    for cores, expected in ((1, 1 << 20), (2, 2 << 20), (4, 4 << 20), (64, 8 << 20)):
        monkeypatch.setattr(launching, "available_cpus", lambda c=cores: c)
        assert launching.max_pixels("cpu") == expected
        assert launching.max_pixels("cpu") < 4096 * 4096  # that upload took 159 s on 2 cores
    assert launching.max_pixels("cuda") == 4096 * 4096
    monkeypatch.setenv("AFINE_MAX_IMAGE_PIXELS", "12345")
    assert launching.max_pixels("cpu") == launching.max_pixels("cuda") == 12345


def test_all_zero_4096_png_is_refused_from_its_header(guarded_demo, tmp_path, monkeypatch):
    """The 16 KB all-zero 4096x4096 PNG of the issue, on a 2-core CPU by default: refused in well under a second of
    work, before anything is decoded, and the message states the limit."""
    import zlib

    import PIL.Image

    from afine_apps import launching
    from tests.hostile_corpus import png_chunk

    monkeypatch.delenv("AFINE_MAX_IMAGE_PIXELS", raising=False)
    monkeypatch.setattr(launching, "available_cpus", lambda: 2)
    raw = zlib.compress(b"\0" * ((4096 * 3 + 1) * 4096), 9)
    import struct

    png = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4096, 4096, 8, 2, 0, 0, 0))
           + png_chunk(b"IDAT", raw) + png_chunk(b"IEND", b""))
    assert len(png) < 64 * 1024
    path = tmp_path / "zeros.png"
    path.write_bytes(png)
    decoded = []
    original = PIL.Image.Image.load
    monkeypatch.setattr(PIL.Image.Image, "load", lambda self: decoded.append(self.size) or original(self))
    _, url = guarded_demo
    up = _upload(url, str(path))
    start = time.perf_counter()
    event, message = _http_call(url, "naturalness", [up])
    assert event == "error" and time.perf_counter() - start < 10
    assert "zeros.png" in message and "exceeds the limit of 2,097,152 pixels" in message, message
    assert "AFINE_" not in message
    assert (4096, 4096) not in decoded


def test_gallery_count_is_limited_before_decoding(guarded_demo, gallery_pngs, monkeypatch):
    import modeling_afine.image_io as image_io

    _, url = guarded_demo
    monkeypatch.setenv("AFINE_MAX_GALLERY_IMAGES", "2")
    ups = [_upload(url, gallery_pngs[n]) for n in ("blurred", "noisier", "clean")]
    ref = _upload(url, gallery_pngs["reference"])
    reads = []
    monkeypatch.setattr(image_io, "_identify", lambda *a, **k: reads.append(a) or pytest.fail("read"))
    event, message = _http_call(url, "rank", [ups, ref, False])
    assert event == "error" and message == "Too many candidates: 3 uploaded, at most 2 per ranking.", message
    assert not reads


def test_ranking_csv_stays_in_the_apps_cleaned_folder(guarded_demo, gallery_pngs, tmp_path, monkeypatch):
    import glob
    import tempfile

    from gradio.utils import get_upload_folder

    from afine_apps.demo import ResultFolder

    demo, url = guarded_demo
    assert demo.delete_cache == (600, 3600)
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "afine-ranking-*.csv")))
    made = []
    original_ntf = tempfile.NamedTemporaryFile
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", lambda *a, **k: made.append(k.get("dir")) or original_ntf(*a, **k))
    ups = [_upload(url, gallery_pngs[n]) for n in ("blurred", "clean")]
    event, payload = _http_call(url, "rank", [ups, _upload(url, gallery_pngs["reference"]), False])
    assert event == "complete", payload
    csv_path = json.loads(payload)[2]["path"]
    folder = demo._afine_results.path
    assert Path(csv_path).parent.parent == folder and str(folder).startswith(os.path.realpath(get_upload_folder()))
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "afine-ranking-*.csv"))) == before
    # gr.File's own preprocess would leave an empty, untracked tmpXXXX file in the cache per candidate
    assert get_upload_folder() not in made
    # pruning: files older than the time to live go, fresh ones stay
    results = ResultFolder(ttl=100, root=str(tmp_path))
    old = results.new_file("a.csv", "x")
    fresh = results.new_file("b.csv", "y")
    os.utime(old, (time.time() - 500, time.time() - 500))
    os.utime(Path(old).parent, (time.time() - 500, time.time() - 500))
    results.prune()
    assert not os.path.exists(old) and os.path.exists(fresh)


def test_ranking_csv_escapes_formulas_but_keeps_numbers():
    import csv as csv_module

    from afine_apps.gallery import ranking_csv

    names = ["=HYPERLINK(\"http://x\")", "+1.png", "-cmd.png", "@SUM(A1).png", "\tTab.png", "\rCR.png", "plain.png"]
    rows = [{"rank": i + 1, "name": n, "score": -1.5 + i, "score_raw": -2.25, "fidelity": -0.5,
             "naturalness_distorted": 0.25, "naturalness_reference": -1e-7} for i, n in enumerate(names)]
    parsed = list(csv_module.reader(io.StringIO(ranking_csv(rows), newline="")))
    assert [r[1] for r in parsed[1:]] == ["'" + n for n in names[:-1]] + ["plain.png"]
    for row, original in zip(parsed[1:], rows):
        assert int(row[0]) == original["rank"]
        assert float(row[2]) == original["score"] and float(row[6]) == -1e-7  # numbers stay numbers
        assert not row[2].startswith("'")


def test_client_message_keeps_the_name_and_drops_server_details(tmp_path):
    """Every loader message, as a client sees it: the upload name (even one that looks like a setting), no server
    path, no setting name; the pixel limit itself stays in the message."""
    from modeling_afine.image_io import ImageLoadError, load_image

    from afine_apps.launching import client_message
    from tests.hostile_corpus import png_bytes

    folder = tmp_path / "server" / "cache"
    folder.mkdir(parents=True)
    big = folder / "MY_PHOTO_AFINE.png"
    big.write_bytes(png_bytes(3000, 3000, 1))
    cut = folder / "cut.png"
    cut.write_bytes(png_bytes(64, 64, 64)[:-30])
    for path, kwargs, must in ((big, {"max_pixels": 1000}, "exceeds the limit of 1,000 pixels"),
                               (cut, {}, "truncated")):
        with pytest.raises(ImageLoadError) as info:
            load_image(path, **kwargs)
        raw = str(info.value)
        assert str(folder) in raw and "AFINE_" in raw.replace(path.name, "")  # the library's message, for a CLI
        shown = client_message(raw, str(path))
        assert shown.startswith(path.name + ": ") and must in shown, shown
        assert str(tmp_path) not in shown and "AFINE_" not in shown.replace(path.name, ""), shown


def test_examples_survive_cache_cleaning(guarded_demo):
    """delete_cache removes old uploads but keeps gradio's copies of the examples, and the examples' hidden endpoint
    accepts those copies (what the page sends when the example is clicked)."""
    from gradio.route_utils import delete_files_created_by_app

    demo, url = guarded_demo
    guard = demo._afine_upload_guard
    copies = [p for p in guard._examples if "spaces" not in p]
    assert len(copies) == 2 and all(os.path.isfile(p) for p in copies)
    delete_files_created_by_app(demo, age=None)  # what delete_cache does, with every file old enough
    assert all(os.path.isfile(p) for p in copies)
    dis, ref = sorted(copies, key=os.path.basename)  # .../distorted.png, .../reference.png
    event, payload = _http_call(url, "score_example", [{"path": dis, "meta": META}, {"path": ref, "meta": META}])
    assert event == "complete", payload
