"""Annotation app: official DiffIQA label JSONs, readable by dataset_scripts, resumable, side-independent."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta

import numpy as np
import pytest
from PIL import Image

from afine_apps.annotate import (
    LOCAL_ANNOTATOR,
    AnnotationStore,
    AnnotatorRefused,
    Identity,
    Task,
    answer,
    default_dirs,
    identity_from_env,
    start_session,
)

from .conftest import free_port, noisy, textured

REFS = ("000006x0y770", "000123x5y9")
VARIANTS = ("01", "02", "03")


@pytest.fixture()
def diffiqa_dir(tmp_path):
    """A tiny DiffIQA-style folder: 2 references x 3 enhanced variants, 32x32 PNGs, no labels."""
    root = tmp_path / "DiffIQA"
    (root / "images" / "Original").mkdir(parents=True)
    arrays = {}
    for i, ref in enumerate(REFS):
        base = textured(32, 32, 100 + i)
        Image.fromarray(base).save(root / "images" / "Original" / f"{ref}.png")
        arrays[("Original", ref)] = base
        for j, v in enumerate(VARIANTS):
            (root / "images" / v).mkdir(exist_ok=True)
            enh = noisy(base, 10 + 20 * j, 7 * i + j)
            Image.fromarray(enh).save(root / "images" / v / f"{ref}_{v}.png")
            arrays[(v, ref)] = enh
    return root, arrays


def _oracle_choice(left, right, enhanced: np.ndarray, truth: str) -> str:
    """An annotator who recognises the enhanced image by its pixels and answers ``truth`` about it."""
    if truth == "Similar":
        return "similar"
    enh_side = "left" if np.array_equal(np.asarray(left), enhanced) else "right"
    assert np.array_equal(np.asarray(right if enh_side == "left" else left), enhanced) is False
    better_side = enh_side if truth == "Positive" else ("right" if enh_side == "left" else "left")
    return better_side


def _truth(ref: str, variant: str) -> str:
    return {"01": "Positive", "02": "Similar", "03": "Negative"}[variant] if ref == REFS[0] else \
        {"01": "Negative", "02": "Positive", "03": "Positive"}[variant]


def test_pairs_found_and_label_path(diffiqa_dir):
    root, _ = diffiqa_dir
    store = AnnotationStore(root, seed=0)
    assert [(p.ref, p.variant) for p in store.pairs] == [(r, v) for r in sorted(REFS) for v in VARIANTS]
    p = store.pairs[0]
    assert store.label_path("A", p) == root / "labels" / "A" / p.variant / f"{p.ref}_{p.variant}.json"
    with pytest.raises(ValueError, match="annotator name"):
        store.label_path("../evil", p)


def test_label_semantics_do_not_depend_on_side(diffiqa_dir, tmp_path):
    root, arrays = diffiqa_dir
    store = AnnotationStore(root, seed=0)
    pair = store.pairs[0]
    t0 = datetime(2024, 5, 8, 19, 34, 49)
    for side in ("left", "right"):
        task = Task(pair, side, t0)
        left, right = store.images_of(task)
        enh_arr = arrays[(pair.variant, pair.ref)]
        assert np.array_equal(np.asarray(left if side == "left" else right), enh_arr)
        assert task.label_for(side) == "Positive"          # chose the enhanced image
        assert task.label_for("left" if side == "right" else "right") == "Negative"
        assert task.label_for("similar") == "Similar"


def test_full_session_writes_official_schema_read_by_dataset_scripts(diffiqa_dir, tmp_path):
    root, arrays = diffiqa_dir
    store = AnnotationStore(root, seed=3)
    sides = set()
    for annot in ("A", "B"):
        left, right, text, state = start_session(store, annot)
        n = 0
        while state is not None:
            sides.add(state["enhanced_side"])
            truth = _truth(state["ref"], state["variant"])
            choice = _oracle_choice(left, right, arrays[(state["variant"], state["ref"])], truth)
            left, right, text, state = answer(store, annot, choice, state)
            n += 1
        assert n == len(REFS) * len(VARIANTS) and "all 6 pairs are labelled" in text
    assert sides == {"left", "right"}  # the order was randomised across pairs

    # raw JSON in the official schema
    data = json.loads((root / "labels" / "A" / "02" / f"{REFS[0]}_02.json").read_text())
    assert set(data) == {"Picture_AI", "picture_Original", "Time_cost"}
    assert data["Picture_AI"]["Name"] == f"{REFS[0]}_02.png" and data["Picture_AI"]["File"] == "02"
    assert data["Picture_AI"]["Label"] == "Similar"
    assert data["picture_Original"]["Name"] == f"{REFS[0]}.png" and data["picture_Original"]["Label"] is None
    assert set(data["Time_cost"]) == {"Start", "End", "Total"}
    datetime.strptime(data["Time_cost"]["Start"], "%Y-%m-%d %H:%M:%S")
    assert data["Time_cost"]["Total"] >= 0

    # read back through dataset_scripts
    import dataset_scripts

    ds = dataset_scripts.load("diffiqa", data_dir=str(root), name="annotations", split="full",
                              cache_dir=str(tmp_path / "hf_cache"))
    assert len(ds) == 2 * len(REFS) * len(VARIANTS)
    for row in ds:
        assert ds.features["label"].int2str(row["label"]) == _truth(row["group"], row["variant"]), row
        assert row["annotator"] in ("A", "B")


def test_resume_skips_done_pairs_and_never_overwrites(diffiqa_dir):
    root, _ = diffiqa_dir
    store = AnnotationStore(root, seed=1)
    _, _, _, state = start_session(store, "C")
    first = (state["ref"], state["variant"])
    _, _, text, state2 = answer(store, "C", "similar", state)
    assert "pair 2 of 6" in text
    # a new session (e.g. after a restart) with a new store resumes at the second pair
    store2 = AnnotationStore(root, seed=1)
    assert store2.progress("C") == (1, 6)
    _, _, text, state3 = start_session(store2, "C")
    assert (state3["ref"], state3["variant"]) == (state2["ref"], state2["variant"]) != first
    assert "pair 2 of 6" in text
    # other annotators are independent
    assert store2.progress("D") == (0, 6)
    # answering the already-labelled pair again keeps the first label
    path = store2.label_path("C", store2.pairs[[(p.ref, p.variant) for p in store2.pairs].index(first)])
    before = path.read_text()
    answer(store2, "C", "left", state)
    assert path.read_text() == before


def test_time_cost_is_end_minus_start(diffiqa_dir):
    root, _ = diffiqa_dir
    store = AnnotationStore(root, seed=0)
    t0 = datetime(2024, 5, 8, 19, 34, 49)
    path = store.record("E", Task(store.pairs[0], "left", t0), "right", end=t0 + timedelta(seconds=2.5))
    data = json.loads(path.read_text())
    assert data["Time_cost"] == {"Start": "2024-05-08 19:34:49", "End": "2024-05-08 19:34:51", "Total": 2.5}
    assert data["Picture_AI"]["Label"] == "Negative"


def test_annotate_via_client(diffiqa_dir):
    from gradio_client import Client

    from afine_apps.annotate import build_annotate

    root, _ = diffiqa_dir
    store = AnnotationStore(root, seed=0)
    demo = build_annotate(store, Identity("allowlist", frozenset({"F"})))
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False)
        out = client.predict("F", api_name="/start")
        assert "pair 1 of 6" in out[2]
        out = client.predict("F", api_name="/answer_similar")
        assert "pair 2 of 6" in out[2]
        assert store.progress("F") == (1, 6)
        first = store.pairs[0]
        data = json.loads(store.label_path("F", first).read_text())
        assert data["Picture_AI"]["Label"] == "Similar"
    finally:
        demo.close()


def test_missing_folder_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="Original"):
        AnnotationStore(tmp_path)


def _label_all_through_client(url, annotator, errors):
    from gradio_client import Client

    try:
        # The images are downloaded too: both sessions show the same references at the same time, which once
        # made gradio rewrite one content-addressed cache file while the other session read it; each session
        # now gets its own copies (ServedImages).
        client = Client(url, verbose=False)
        # the app keeps the current pair in the session state; the client keeps the session. The annotator
        # always answers "left is better"; the test checks each label against the side the pair was shown on.
        left, right, text = client.predict(annotator, api_name="/start")
        while "are labelled" not in text:
            assert Image.open(left).size == Image.open(right).size == (32, 32)
            left, right, text = client.predict(annotator, api_name="/answer_left")
    except Exception as exc:  # pragma: no cover - reported by the test
        errors.append(exc)


def test_two_annotators_at_once_through_the_app_keep_every_label(diffiqa_dir, tmp_path):
    """Two clients label every pair concurrently (the app queue runs them in parallel); nothing is lost, the
    files are in the official schema and dataset_scripts reads all of them back."""
    from afine_apps.annotate import build_annotate

    root, arrays = diffiqa_dir
    store = AnnotationStore(root, seed=5)
    demo = build_annotate(store, Identity("allowlist", frozenset({"A", "B"})))
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    errors: list = []
    try:
        threads = [threading.Thread(target=_label_all_through_client, args=(url, a, errors)) for a in ("A", "B")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
    finally:
        demo.close()
    assert not errors, errors
    n = len(REFS) * len(VARIANTS)
    for annot in ("A", "B"):
        assert store.progress(annot) == (n, n)
        files = sorted((root / "labels" / annot).rglob("*"))
        assert [f for f in files if f.is_file() and not f.name.endswith(".json")] == []  # no temp files left
    import dataset_scripts

    ds = dataset_scripts.load("diffiqa", data_dir=str(root), name="annotations", split="full",
                              cache_dir=str(tmp_path / "hf_cache"))
    assert len(ds) == 2 * n
    name = ds.features["label"].int2str  # labels are a ClassLabel
    assert {name(r["label"]) for r in ds} <= {"Positive", "Negative"}  # "left is better" is never "Similar"
    # each label agrees with the side the pair was shown on (seeded, so recomputable)
    for row in ds:
        pair = next(p for p in store.pairs if (p.ref, p.variant) == (row["group"], row["variant"]))
        side = store.side_for(row["annotator"], pair)
        assert name(row["label"]) == ("Positive" if side == "left" else "Negative"), row


def test_concurrent_writes_of_one_label_keep_the_first(diffiqa_dir):
    """Many threads answering the same pair for the same annotator (e.g. two browser tabs): one label file,
    complete JSON, never overwritten."""
    root, _ = diffiqa_dir
    store = AnnotationStore(root, seed=0)
    pair = store.pairs[0]
    barrier = threading.Barrier(8)
    choices = ["left", "right"] * 4

    def write(choice):
        barrier.wait()
        store.record("Z", Task(pair, "left", datetime(2024, 1, 1)), choice)

    threads = [threading.Thread(target=write, args=(c,)) for c in choices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    folder = root / "labels" / "Z" / pair.variant
    assert [p.name for p in folder.iterdir()] == [f"{pair.ref}_{pair.variant}.json"]
    data = json.loads((folder / f"{pair.ref}_{pair.variant}.json").read_text())
    assert data["Picture_AI"]["Label"] in ("Positive", "Negative")


def test_default_dirs_prefer_persistent_storage(tmp_path, monkeypatch):
    monkeypatch.delenv("AFINE_ANNOTATE_DATA", raising=False)
    monkeypatch.delenv("AFINE_ANNOTATE_LABELS", raising=False)
    persistent = tmp_path / "data"
    assert default_dirs(persistent=persistent) == (default_dirs(persistent=persistent)[0], None)
    assert str(default_dirs(persistent=persistent)[0]) == "data"  # no /data: a local ./data
    persistent.mkdir()
    assert default_dirs(persistent=persistent) == (persistent / "afine-annotate", None)
    monkeypatch.setenv("AFINE_ANNOTATE_DATA", str(tmp_path / "x"))
    monkeypatch.setenv("AFINE_ANNOTATE_LABELS", str(tmp_path / "labels"))
    assert default_dirs(persistent=persistent) == (tmp_path / "x", tmp_path / "labels")


# ------------------------------------------------------------------------------------------ identity (issue 18)


def _label_files(root):
    labels = root / "labels"
    return sorted(str(p.relative_to(labels)) for p in labels.rglob("*")) if labels.exists() else []


class _Profile:
    def __init__(self, username):
        self.username = username


def test_identity_resolves_names_only_from_the_login_or_the_list():
    hf = Identity("hf", frozenset({"alice"}))
    assert hf.resolve("bob", profile=_Profile("alice")) == "alice"  # a chosen name is ignored: the login counts
    for profile in (None, _Profile("bob"), _Profile("<b>alice</b>")):
        with pytest.raises(AnnotatorRefused):
            hf.resolve("alice", profile=profile)
    assert Identity("hf").resolve(profile=_Profile("carol")) == "carol"  # no list: any signed-in account
    pw = Identity("password", frozenset({"alice"}), (("alice", "x"), ("bob", "y")))
    assert pw.resolve("bob", username="alice") == "alice" and pw.auth == [("alice", "x"), ("bob", "y")]
    with pytest.raises(AnnotatorRefused):
        pw.resolve("alice", username="bob")  # logged in, but not on the list
    with pytest.raises(AnnotatorRefused):
        pw.resolve("alice", username=None)
    allow = Identity("allowlist", frozenset({"alice", "bob"}))
    assert allow.resolve(" bob ") == "bob" and allow.auth is None
    for chosen in ("mallory", "", None, "../alice", "<img src=x onerror=alert(1)>"):
        with pytest.raises(AnnotatorRefused) as err:
            allow.resolve(chosen)
        assert "<" not in str(err.value) and "mallory" not in str(err.value)
    local = Identity("local", frozenset({LOCAL_ANNOTATOR}))
    assert local.resolve("mallory") == LOCAL_ANNOTATOR and "unprotected for one local annotator" in local.notice()


def test_identity_from_env(tmp_path):
    assert identity_from_env({}).mode == "local"
    assert identity_from_env({"AFINE_ANNOTATORS": "alice, bob"}) == Identity("allowlist", frozenset({"alice", "bob"}))
    assert identity_from_env({"SPACE_ID": "me/annotate"}) == Identity("hf", None)
    assert identity_from_env({"SPACE_ID": "me/annotate", "AFINE_ANNOTATORS": "alice"}).allowed == {"alice"}
    auth = tmp_path / "passwords.txt"
    auth.write_text("# annotators\nalice:s3cret:with:colons\nbob:pw\n")
    ident = identity_from_env({"AFINE_ANNOTATE_AUTH_FILE": str(auth)})
    assert ident.mode == "password" and ident.allowed == {"alice", "bob"}
    assert ident.auth == [("alice", "s3cret:with:colons"), ("bob", "pw")]
    assert identity_from_env({"AFINE_ANNOTATORS": "alice"}, auth_file=auth).allowed == {"alice"}
    with pytest.raises(ValueError, match="not a valid annotator name"):
        identity_from_env({"AFINE_ANNOTATORS": "alice,<b>bob</b>"})
    auth.write_text("alice\n")
    with pytest.raises(ValueError, match="line 1"):
        identity_from_env({"AFINE_ANNOTATE_AUTH_FILE": str(auth)})


def _launch(demo, **kwargs):
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            **kwargs)
    return url


def test_allowlist_refuses_outsiders_through_the_api_before_writing(diffiqa_dir):
    """gradio_client calls the endpoints directly with names outside AFINE_ANNOTATORS: refused, nothing written
    (no label, no folder); the listed annotator's answers are written under her name."""
    from gradio_client import Client

    from afine_apps.annotate import build_annotate

    root, _ = diffiqa_dir
    store = AnnotationStore(root, seed=0)
    demo = build_annotate(store, identity_from_env({"AFINE_ANNOTATORS": "alice,bob"}))
    url = _launch(demo)
    try:
        client = Client(url, verbose=False, download_files=False)
        assert "pair 1 of 6" in client.predict("alice", api_name="/start")[2]
        for name in ("mallory", "Alice", "<b>bob</b>", "../alice", "", 5, "a" * 100_000):
            for api in ("/start", "/answer_left", "/answer_similar"):
                with pytest.raises(Exception, match="not one of this app's annotators|Choose your name") as err:
                    client.predict(name, api_name=api)
                assert "<b>" not in str(err.value)
        assert _label_files(root) == []
        # the page's state belongs to alice: a listed name that was not shown this pair cannot answer it
        with pytest.raises(Exception, match="Start / resume"):
            client.predict("bob", api_name="/answer_left")
        assert "pair 2 of 6" in client.predict("alice", api_name="/answer_similar")[2]
        assert _label_files(root) == ["alice", "alice/01", f"alice/01/{REFS[0]}_01.json"]
    finally:
        demo.close()


def test_local_mode_has_one_annotator_and_says_it_is_unprotected(diffiqa_dir):
    from gradio_client import Client

    from afine_apps.annotate import build_annotate

    root, _ = diffiqa_dir
    demo = build_annotate(AnnotationStore(root, seed=0), identity_from_env({}))
    url = _launch(demo)
    try:
        import urllib.request

        page = urllib.request.urlopen(url + "config").read().decode()
        assert "Running unprotected for one local annotator" in page
        client = Client(url, verbose=False, download_files=False)
        params = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/start"]["parameters"]
        assert params == []  # no name to send: the app has one annotator
        client.predict(api_name="/start")
        client.predict(api_name="/answer_right")  # pair 2 is shown
        # a broken image on the server: a plain message, without the server's paths
        store = AnnotationStore(root, seed=0)
        store.pairs[2].enhanced.write_bytes(b"\x89PNG broken")
        with pytest.raises(Exception, match="could not read an image") as err:
            client.predict(api_name="/answer_similar")
        assert str(root) not in str(err.value) and "PNG" not in str(err.value)
    finally:
        demo.close()
    assert _label_files(root)[:2] == [LOCAL_ANNOTATOR, f"{LOCAL_ANNOTATOR}/01"]


def test_password_login_names_the_annotator(diffiqa_dir, tmp_path):
    from gradio_client import Client

    from afine_apps.annotate import build_annotate

    root, _ = diffiqa_dir
    auth = tmp_path / "passwords.txt"
    auth.write_text("alice:pa55\neve:pw\n")
    identity = identity_from_env({"AFINE_ANNOTATORS": "alice,bob"}, auth_file=auth)
    demo = build_annotate(AnnotationStore(root, seed=0), identity)
    url = _launch(demo, auth=identity.auth)
    try:
        with pytest.raises(Exception):
            Client(url, verbose=False, download_files=False)  # no login, no access
        with pytest.raises(Exception):
            Client(url, verbose=False, download_files=False, auth=("alice", "wrong"))
        eve = Client(url, verbose=False, download_files=False, auth=("eve", "pw"))  # can log in, is not listed
        with pytest.raises(Exception, match="not one of this app's annotators"):
            eve.predict(api_name="/start")
        assert _label_files(root) == []
        alice = Client(url, verbose=False, download_files=False, auth=("alice", "pa55"))
        alice.predict(api_name="/start")
        alice.predict(api_name="/answer_left")
    finally:
        demo.close()
    assert _label_files(root)[:2] == ["alice", "alice/01"]


def test_hf_login_through_gradio_oauth(diffiqa_dir, monkeypatch):
    """The Space mode: gradio's OAuth routes with its local mock (its profile replaced by ours, as the mock
    otherwise asks the Hub who is logged in). The annotator is the signed-in account; no sign-in, no access."""
    pytest.importorskip("itsdangerous")  # gradio's session cookies (gradio[oauth])
    import time

    import gradio.oauth
    import httpx
    from gradio_client import Client

    from afine_apps.annotate import build_annotate

    # gradio builds the mocked login once, at launch; the profile dict is shared, so changing it switches users
    userinfo = {"sub": "1", "name": "alice", "preferred_username": "alice", "profile": "", "picture": ""}

    def mocked_info():
        return {"access_token": "t", "token_type": "bearer", "scope": "openid profile",
                "expires_at": int(time.time()) + 3600, "userinfo": userinfo}

    monkeypatch.setattr(gradio.oauth, "_get_mocked_oauth_info", mocked_info)
    root, _ = diffiqa_dir
    demo = build_annotate(AnnotationStore(root, seed=0), identity_from_env({"SPACE_ID": "me/x", "AFINE_ANNOTATORS": "alice"}))
    monkeypatch.delenv("SPACE_ID", raising=False)  # gradio itself must take its local (mocked) OAuth routes
    url = _launch(demo)

    def signed_in_client(name):
        userinfo.update(name=name, preferred_username=name)
        with httpx.Client(base_url=url, follow_redirects=False) as http:
            r = http.get("login/huggingface")
            r = http.get(r.headers["location"])
        cookie = r.headers["set-cookie"].split(";")[0]  # a Secure cookie: passed on by hand over http
        return Client(url, verbose=False, download_files=False, headers={"Cookie": cookie})

    try:
        with pytest.raises(Exception, match="Sign in"):
            Client(url, verbose=False, download_files=False).predict(api_name="/start")
        with pytest.raises(Exception, match="not one of this app's annotators"):
            signed_in_client("mallory").predict(api_name="/answer_left")
        assert _label_files(root) == []
        alice = signed_in_client("alice")
        assert "**alice**" in alice.predict(api_name="/start")[2]
        alice.predict(api_name="/answer_similar")
    finally:
        demo.close()
    assert _label_files(root)[:2] == ["alice", "alice/01"]


def test_served_images_do_not_reveal_the_reference(diffiqa_dir):
    """The reference recurs in every pair of its group; its served copies must differ in URL, name and bytes."""
    from gradio_client import Client

    from afine_apps.annotate import build_annotate

    root, arrays = diffiqa_dir
    store = AnnotationStore(root, seed=0)
    demo = build_annotate(store, Identity("allowlist", frozenset({"A"})))
    url = _launch(demo)
    urls, hashes = [], []
    try:
        client = Client(url, verbose=False)
        left, right, text = client.predict("A", api_name="/start")
        for _ in range(len(VARIANTS)):  # the three pairs of the first reference
            for shown in (left, right):
                img = np.asarray(Image.open(shown).convert("RGB"))
                if np.array_equal(img, arrays[("Original", REFS[0])]):
                    data = open(shown, "rb").read()
                    hashes.append(data)
                    urls.append(shown)
            assert REFS[0] not in left + right and "Original" not in left + right
            left, right, text = client.predict("A", api_name="/answer_similar")
        folders = list(demo.afine_served.root.iterdir()) if hasattr(demo, "afine_served") else []
    finally:
        demo.close()
    assert len(urls) == len(VARIANTS)
    names = [u.replace("\\", "/").rsplit("/", 2)[-2:] for u in urls]  # (content-hash folder, file name)
    assert len({n[0] for n in names}) == len({n[1] for n in names}) == len(VARIANTS)
    assert len(set(hashes)) == len(VARIANTS)
    # the app keeps only the pair a session shows now
    assert all(len(list(f.iterdir())) <= 2 for f in folders)


def test_gr_blocks_cleans_its_cache(diffiqa_dir):
    from afine_apps.annotate import build_annotate

    root, _ = diffiqa_dir
    demo = build_annotate(AnnotationStore(root, seed=0), Identity("local", frozenset({LOCAL_ANNOTATOR})))
    assert demo.delete_cache is not None and demo.delete_cache[1] <= 24 * 3600
