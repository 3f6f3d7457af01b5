"""Cost of the folder fingerprint on a DiffIQA-sized tree (not a test; run by hand).

    python benchmarks/bench_fingerprint.py generate /tmp/fp_tree       # 537,624 label + 209,076 image files
    python benchmarks/bench_fingerprint.py compare /tmp/fp_tree        # stat calls counted in Python + time
    strace -f -c -e trace=%stat,getdents64 python benchmarks/bench_fingerprint.py new /tmp/fp_tree
    rm -rf /tmp/fp_tree

``generate DIR N`` writes a smaller tree of N references (a quick check that the script works).
The files are empty (the fingerprint never reads them); names follow the official layout
(``labels/{A,B,C}/{01..06}/{ref}_{idx}.json``, ``images/{01..06}/{ref}_{idx}.png``, ``images/Original/{ref}.png``).
``new`` is the package's fingerprint (size and mtime of every label file, folders stat-ed by threads, image
names only); ``old`` is the same information gathered the plain way (``os.walk`` and one ``os.stat`` per label
file, one thread), kept here for the comparison. Budget: under 3 s for the full tree. The first run after
``generate`` (or on a cold page cache) is slower than the following ones; ``compare`` runs each twice.
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


def generate(root: Path, n_refs: int = N_REFS) -> None:
    flags = os.O_CREAT | os.O_WRONLY
    refs = [f"{i:06d}x{i % 7 * 64}y{i % 5 * 64}" for i in range(n_refs)]
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
    """The plain way: ``os.walk`` and one ``os.stat`` per label file, in one thread."""
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
        generate(root, int(argv[2]) if len(argv) > 2 else N_REFS)
        print(f"generated in {time.perf_counter() - t:.1f} s")
        return 0
    roots, images = [root / "labels"], [root / "images"]
    if mode in ("old", "new"):
        t = time.perf_counter()
        fp = (old_fingerprint if mode == "old" else new_fingerprint)(roots, images)
        print(f"{mode}: {fp} in {time.perf_counter() - t:.2f} s")
        return 0
    import dataset_scripts.builders.base  # noqa: F401  (import outside the measurement)

    from dataset_scripts.builders import base

    n_labels = sum(len(files) for root_ in roots for _, _, files in os.walk(root_))
    print(f"{root}: {n_labels:,} label files, {base._FINGERPRINT_THREADS} threads (run it on a quiet machine: times "
          "are meaningless while other jobs share the cores)")
    real = os.stat
    for name, fn in (("old", old_fingerprint), ("new", new_fingerprint)) * 2:
        n = [0]

        def counting(*a, **k):
            n[0] += 1
            return real(*a, **k)

        os.stat = counting  # os.stat calls; the package's per-file stats are DirEntry.stat (not counted here)
        try:
            t = time.perf_counter()
            fp = fn(roots, images)
            dt = time.perf_counter() - t
        finally:
            os.stat = real
        print(f"{name}: {fp}, os.stat calls {n[0]:,}, {dt:.2f} s" + (f" ({'under' if dt < 3 else 'OVER'} the 3 s "
                                                                     "budget)" if name == "new" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
