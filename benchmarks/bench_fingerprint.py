"""Cost of the folder fingerprint on a DiffIQA-sized tree (not a test; run by hand).

    python benchmarks/bench_fingerprint.py generate /tmp/fp_tree       # 537,624 label + 209,076 image files
    strace -f -c -e trace=%stat,getdents64 python benchmarks/bench_fingerprint.py old /tmp/fp_tree
    strace -f -c -e trace=%stat,getdents64 python benchmarks/bench_fingerprint.py new /tmp/fp_tree
    python benchmarks/bench_fingerprint.py compare /tmp/fp_tree        # stat calls counted in Python + time
    rm -rf /tmp/fp_tree

The files are empty (the fingerprint never reads them); names follow the official layout
(``labels/{A,B,C}/{01..06}/{ref}_{idx}.json``, ``images/{01..06}/{ref}_{idx}.png``, ``images/Original/{ref}.png``).
``old`` is the fingerprint this package used before (path, size and mtime of every label file), kept here
for the comparison.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when not installed

N_REFS = 29_868  # DiffIQA references; x 6 variants x 3 annotators = 537,624 label files
VARIANTS = [f"{v:02d}" for v in range(1, 7)]


def generate(root: Path) -> None:
    flags = os.O_CREAT | os.O_WRONLY
    refs = [f"{i:06d}x{i % 7 * 64}y{i % 5 * 64}" for i in range(N_REFS)]
    for a in "ABC":
        for v in VARIANTS:
            d = root / "labels" / a / v
            d.mkdir(parents=True, exist_ok=True)
            for r in refs:
                os.close(os.open(d / f"{r}_{v}.json", flags))
    for v in VARIANTS + ["Original"]:
        d = root / "images" / v
        d.mkdir(parents=True, exist_ok=True)
        for r in refs:
            os.close(os.open(d / (f"{r}.png" if v == "Original" else f"{r}_{v}.png"), flags))


def old_fingerprint(roots, image_roots) -> str:
    """The previous fingerprint: one ``os.stat`` per label file."""
    h = hashlib.sha1()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                p = os.path.join(dirpath, name)
                st = os.stat(p)
                h.update(f"{os.path.relpath(p, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for root in image_roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            h.update(("\n".join([os.path.relpath(dirpath, root)] + sorted(filenames)) + "\n").encode())
    return h.hexdigest()[:16]


def new_fingerprint(roots, image_roots) -> str:
    from dataset_scripts.builders.base import fingerprint_files

    return fingerprint_files(roots, image_roots)


def main(argv) -> int:
    mode, root = argv[0], Path(argv[1])
    if mode == "generate":
        t = time.perf_counter()
        generate(root)
        print(f"generated in {time.perf_counter() - t:.1f} s")
        return 0
    roots, images = [root / "labels"], [root / "images"]
    if mode in ("old", "new"):
        t = time.perf_counter()
        fp = (old_fingerprint if mode == "old" else new_fingerprint)(roots, images)
        print(f"{mode}: {fp} in {time.perf_counter() - t:.2f} s")
        return 0
    import dataset_scripts.builders.base  # noqa: F401  (import outside the measurement)

    counts = {}
    real = os.stat
    for name, fn in (("old", old_fingerprint), ("new", new_fingerprint)):
        n = [0]

        def counting(*a, **k):
            n[0] += 1
            return real(*a, **k)

        os.stat = counting
        try:
            t = time.perf_counter()
            fn(roots, images)
            dt = time.perf_counter() - t
        finally:
            os.stat = real
        counts[name] = (n[0], dt)
        print(f"{name}: os.stat calls {n[0]:,}, {dt:.2f} s (shared machine: time is indicative only)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
