"""``stagebox bag validate`` of a 2 GiB tarred bag: this tree against an earlier revision.

The issue's bar: validating a 2 GiB tar stays within 5% of the earlier time, with
APTrust's tag-file rules on. Both sides validate the same tar (md5 and sha256
manifests, an aptrust-info.txt, so it passes the earlier ``aptrust`` profile and
APTrust 2.3 alike), which stays in the page cache: the hashing and the rules
decide, not the disk. The earlier revision runs from a ``git worktree`` of
``--base`` with its ``src`` first on ``PYTHONPATH``, in this tree's virtualenv.
Runs alternate (earlier, this, earlier, this, ...) after one warm-up each; the
result is the median and spread of the per-pair ratios this/earlier, every
pair kept, written to ``benchmarks/results/bag-validate-<time>.json``.

    .venv/bin/python -m benchmarks.bag_validate [--base REV] [--pairs 5] [--size-gib 2]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work" / "bag-validate"
FILE_BYTES = 1 << 20
APTRUST_INFO = b"Title: Bench\nAccess: Institution\nStorage-Option: Standard\n"


def make_tar(path: Path, top: str, size: int) -> None:
    """A bag ``top`` of ``size`` bytes in 1 MiB files, md5 and sha256 manifests, straight to tar."""
    rng = random.Random(16)
    block = rng.randbytes(64 << 20)
    files = size // FILE_BYTES
    bagit_txt = b"BagIt-Version: 0.97\nTag-File-Character-Encoding: UTF-8\n"
    bag_info = f"Source-Organization: bench\nPayload-Oxum: {files * FILE_BYTES}.{files}\n".encode()
    digests: dict[str, dict[str, str]] = {"md5": {}, "sha256": {}}

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(f"{top}/{name}")
        info.size, info.mtime = len(data), 1_700_000_000
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "bagit.txt", bagit_txt)
        add(tar, "bag-info.txt", bag_info)
        add(tar, "aptrust-info.txt", APTRUST_INFO)
        for i in range(files):
            name = f"data/d{i % 16:02d}/f{i:05d}.bin"
            start = (i * 1_048_583) % (len(block) - FILE_BYTES)
            data = f"{name}\n".encode() + block[start : start + FILE_BYTES - len(name) - 1]
            for alg, table in digests.items():
                table[name] = hashlib.new(alg, data).hexdigest()
            add(tar, name, data)
        tags = {"bagit.txt": bagit_txt, "bag-info.txt": bag_info, "aptrust-info.txt": APTRUST_INFO}
        for alg, table in digests.items():
            manifest = "".join(f"{d}  {n}\n" for n, d in sorted(table.items())).encode()
            tags[f"manifest-{alg}.txt"] = manifest
            add(tar, f"manifest-{alg}.txt", manifest)
        lines = "".join(f"{hashlib.md5(d).hexdigest()}  {n}\n" for n, d in tags.items())
        add(tar, "tagmanifest-md5.txt", lines.encode())


def worktree(rev: str) -> Path:
    where = WORK / f"base-{rev[:12]}"
    if not where.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev],
                       check=True, capture_output=True)  # fmt: skip
    return where


def timed(src: Path, tar: Path, profile: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    argv = [sys.executable, "-m", "stagebox", "bag", "validate", str(tar), "--profile", profile]
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{src}: bag validate failed: {done.stderr.strip()}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="2db1594", help="the earlier revision")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--profile", default="aptrust")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    size = int(args.size_gib * (1 << 30))
    tar = WORK / f"bag{size >> 20}m.tar"
    if not tar.exists():
        print(f"generating {tar}", flush=True)
        make_tar(tar.with_suffix(".tmp"), tar.stem, size)
        tar.with_suffix(".tmp").rename(tar)
    base = worktree(args.base) / "src"
    here = ROOT / "src"
    for src in (base, here):  # warm-up: the tar into the page cache, imports compiled
        timed(src, tar, args.profile)
    pairs = []
    for i in range(args.pairs):
        before, after = timed(base, tar, args.profile), timed(here, tar, args.profile)
        pairs.append({"base_s": round(before, 3), "this_s": round(after, 3),
                      "ratio": round(after / before, 4)})  # fmt: skip
        print(f"pair {i + 1}: base {before:.2f} s, this {after:.2f} s, ratio {after / before:.3f}",
              flush=True)  # fmt: skip
    ratios = [p["ratio"] for p in pairs]
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    result = {
        "case": f"bag validate --profile {args.profile} of a {args.size_gib:g} GiB tar",
        "base": args.base,
        "this": commit,
        "pairs": pairs,
        "median_ratio": statistics.median(ratios),
        "min_ratio": min(ratios),
        "max_ratio": max(ratios),
        "target": "median ratio <= 1.05",
        "met": statistics.median(ratios) <= 1.05,
    }
    out = ROOT / "benchmarks" / "results" / f"bag-validate-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"median ratio {result['median_ratio']:.3f} (min {min(ratios):.3f}, "
          f"max {max(ratios):.3f}); {'met' if result['met'] else 'MISSED'} ({out})")  # fmt: skip


if __name__ == "__main__":
    main()
