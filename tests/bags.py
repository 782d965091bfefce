"""Bags for tests: made by bagit-python, broken on purpose, then tarred, zipped or left a directory.

``make_bag_dir`` builds a good bag with bagit-python; ``BREAKAGES`` spoil one on
disk (so bagit-python can judge the result too); ``to_tar`` and ``to_zip``
serialise a bag directory; ``TarBuilder`` writes tars entry by entry with
Python's tarfile, to craft entries no real bag should hold.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import logging
import lzma
import os
import tarfile
import unicodedata
import zipfile
from collections.abc import Callable
from pathlib import Path

import bagit

# bagit-python logs every file it hashes; the tests read its verdicts instead.
logging.getLogger("bagit").setLevel(logging.ERROR)

PAYLOAD: dict[str, bytes] = {
    "a.txt": b"alpha\n",
    "sub/deeper/b.bin": bytes(range(256)) * 40,
    "empty.dat": b"",
    "with space.txt": b"spaced out\n",
    "caf\u00e9/na\u00efve \u00fcber.txt": "unicode \u2713\n".encode(),
}


def make_bag_dir(
    root: Path,
    name: str = "bag1",
    *,
    payload: dict[str, bytes] | None = None,
    algorithms: tuple[str, ...] = ("md5", "sha256", "sha512"),
    info: dict[str, str] | None = None,
    aptrust_info: dict[str, str | None] | None = None,
) -> Path:
    """A valid BagIt 0.97 bag made by bagit-python at ``root/name``; with
    ``aptrust_info``, an aptrust-info.txt holding those tags (None: left out)."""
    bag_dir = root / name
    bag_dir.mkdir(parents=True)
    for rel, data in (PAYLOAD if payload is None else payload).items():
        target = bag_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    bag_info = {"Source-Organization": "Example Lab"} if info is None else dict(info)
    bagit.make_bag(str(bag_dir), bag_info, checksums=list(algorithms))
    if aptrust_info is not None:
        lines = [
            f"{label}: {value}\n" for label, value in aptrust_info.items() if value is not None
        ]
        (bag_dir / "aptrust-info.txt").write_text("".join(lines), encoding="utf-8")
        retag(bag_dir)
    return bag_dir


def bagit_python_valid(bag_dir: Path) -> bool:
    """bagit-python's verdict on a bag directory (the oracle)."""
    try:
        bagit.Bag(str(bag_dir)).validate()
    except bagit.BagError:
        return False
    return True


def retag(bag_dir: Path) -> None:
    """Rewrite every tag manifest for the tag files as they are now."""
    for manifest in bag_dir.glob("tagmanifest-*.txt"):
        algorithm = manifest.name[len("tagmanifest-") : -len(".txt")]
        lines = []
        for path in sorted(bag_dir.iterdir()):
            if path.is_file() and not path.name.startswith("tagmanifest-"):
                digest = hashlib.new(algorithm, path.read_bytes()).hexdigest()
                lines.append(f"{digest} {path.name}\n")
        manifest.write_text("".join(lines), encoding="utf-8")


def set_tag(bag_dir: Path, tag_file: str, label: str, value: str | None) -> None:
    """Set (or with None remove) ``label`` in a tag file, then :func:`retag`."""
    path = bag_dir / tag_file
    lines = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if not line.startswith(f"{label}:")
    ]
    if value is not None:
        lines.append(f"{label}: {value}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    retag(bag_dir)


def set_version(bag_dir: Path, version: str) -> None:
    (bag_dir / "bagit.txt").write_text(
        f"BagIt-Version: {version}\nTag-File-Character-Encoding: UTF-8\n", encoding="utf-8"
    )
    retag(bag_dir)


# -- breakages applied to a bag directory -----------------------------------


def _wrong_digest(bag: Path) -> None:
    (bag / "data/a.txt").write_bytes(b"ALPHA\n")  # same size: only digests can tell


def _extra_payload(bag: Path) -> None:
    (bag / "data/new.txt").write_bytes(b"not in any manifest\n")


def _missing_payload(bag: Path) -> None:
    (bag / "data/a.txt").unlink()


def _missing_manifests(bag: Path) -> None:
    for manifest in bag.glob("manifest-*.txt"):
        manifest.unlink()
    retag(bag)


def _no_bagit_txt(bag: Path) -> None:
    (bag / "bagit.txt").unlink()


def _oxum_mismatch(bag: Path) -> None:
    set_tag(bag, "bag-info.txt", "Payload-Oxum", "999.5")


def _tag_manifest_mismatch(bag: Path) -> None:
    with (bag / "bag-info.txt").open("a", encoding="utf-8") as f:
        f.write("Contact-Name: changed after bagging\n")


def _fetch_present(bag: Path) -> None:
    (bag / "fetch.txt").write_text("https://example.org/a.txt 6 data/a.txt\n", encoding="utf-8")


def _fetch_absent(bag: Path) -> None:
    _fetch_present(bag)
    (bag / "data/a.txt").unlink()


def _version_1_0(bag: Path) -> None:
    set_version(bag, "1.0")


def _version_0_96(bag: Path) -> None:
    set_version(bag, "0.96")


def _version_0_95(bag: Path) -> None:
    (bag / "bag-info.txt").rename(bag / "package-info.txt")
    set_version(bag, "0.95")


def _version_2_0(bag: Path) -> None:
    set_version(bag, "2.0")


def _bagit_txt_bom(bag: Path) -> None:
    path = bag / "bagit.txt"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    retag(bag)


def _manifest_escapes(bag: Path) -> None:
    with (bag / "manifest-sha256.txt").open("a", encoding="utf-8") as f:
        f.write(f"{'0' * 64}  ../outside.txt\n")
    retag(bag)


def _manifest_nfd(bag: Path) -> None:
    # The files keep their NFC names; the manifests now spell them NFD, as a Mac might.
    for manifest in bag.glob("manifest-*.txt"):
        text = manifest.read_text(encoding="utf-8")
        manifest.write_text(unicodedata.normalize("NFD", text), encoding="utf-8")
    retag(bag)


def _manifest_comments_and_repeats(bag: Path) -> None:
    path = bag / "manifest-sha256.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("# made by hand\n\n" + "\n".join(lines + lines[:1]) + "\n", encoding="utf-8")
    retag(bag)


def _manifest_conflict(bag: Path) -> None:
    path = bag / "manifest-sha256.txt"
    first = path.read_text(encoding="utf-8").splitlines()[0]
    with path.open("a", encoding="utf-8") as f:
        f.write(f"{'f' * 64}  {first.split(None, 1)[1]}\n")
    retag(bag)


def _one_algorithm_wrong(bag: Path) -> None:
    path = bag / "manifest-md5.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines = [
        f"{'0' * 32}  {line.split(None, 1)[1]}" if line.endswith("data/a.txt") else line
        for line in lines
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    retag(bag)


def _bad_tag_line(bag: Path) -> None:
    with (bag / "bag-info.txt").open("a", encoding="utf-8") as f:
        f.write("this line has no colon\n")
    retag(bag)


def _unknown_encoding(bag: Path) -> None:
    (bag / "bagit.txt").write_text(
        "BagIt-Version: 0.97\nTag-File-Character-Encoding: NO-SUCH-CODEC\n", encoding="utf-8"
    )
    retag(bag)


def _no_data_dir(bag: Path) -> None:
    for path in sorted((bag / "data").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (bag / "data").rmdir()


def _empty_payload(bag: Path) -> None:
    for path in sorted((bag / "data").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    for manifest in bag.glob("manifest-*.txt"):
        manifest.write_text("")
    set_tag(bag, "bag-info.txt", "Payload-Oxum", "0.0")


def _folded_tag(bag: Path) -> None:
    with (bag / "bag-info.txt").open("a", encoding="utf-8") as f:
        f.write("External-Description: a long description\n  folded onto a second line\n")
    retag(bag)


Breakage = Callable[[Path], None]

# name -> (breakage or None, valid?): every one of these has a directory form,
# so bagit-python judges it too (see test_bag_oracle.py).
BREAKAGES: dict[str, tuple[Breakage | None, bool]] = {
    "good": (None, True),
    "version_1_0": (_version_1_0, True),
    "version_0_96": (_version_0_96, True),
    "version_0_95": (_version_0_95, True),
    "fetch_present": (_fetch_present, True),
    "manifest_comments_and_repeats": (_manifest_comments_and_repeats, True),
    "folded_tag": (_folded_tag, True),
    "empty_payload": (_empty_payload, True),
    "wrong_digest": (_wrong_digest, False),
    "one_algorithm_wrong": (_one_algorithm_wrong, False),
    "extra_payload": (_extra_payload, False),
    "missing_payload": (_missing_payload, False),
    "missing_manifests": (_missing_manifests, False),
    "no_bagit_txt": (_no_bagit_txt, False),
    "oxum_mismatch": (_oxum_mismatch, False),
    "tag_manifest_mismatch": (_tag_manifest_mismatch, False),
    "fetch_absent": (_fetch_absent, False),
    "version_2_0": (_version_2_0, False),
    "bagit_txt_bom": (_bagit_txt_bom, False),
    "manifest_escapes": (_manifest_escapes, False),
    "manifest_conflict": (_manifest_conflict, False),
    "manifest_nfd": (_manifest_nfd, False),
    "bad_tag_line": (_bad_tag_line, False),
    "unknown_encoding": (_unknown_encoding, False),
    "no_data_dir": (_no_data_dir, False),
}


def broken_bag(root: Path, breakage: str, **options: object) -> Path:
    """A bag directory made by :func:`make_bag_dir`, then spoilt by ``BREAKAGES[breakage]``."""
    bag_dir = make_bag_dir(root, **options)  # type: ignore[arg-type]
    spoil, _ = BREAKAGES[breakage]
    if spoil is not None:
        spoil(bag_dir)
    return bag_dir


# -- serialisation -----------------------------------------------------------


def to_tar(
    bag_dir: Path,
    dest: Path | None = None,
    *,
    compression: str = "",
    end_blocks: bool = True,
    arcname: str | None = None,
) -> Path:
    """``bag_dir`` as a tar with one top-level directory named like the bag (or
    ``arcname``). Without ``end_blocks`` the tar ends right after its last
    member's padded data, with no end-of-archive blocks, as DART writes them."""
    suffix = {"": ".tar", "gz": ".tar.gz", "bz2": ".tar.bz2", "xz": ".tar.xz"}[compression]
    dest = dest or bag_dir.with_name(bag_dir.name + suffix)
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(bag_dir, arcname=arcname or bag_dir.name)
    data = plain.getvalue()
    if not end_blocks:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            last = tar.getmembers()[-1]
        data = data[: last.offset_data + -(-last.size // 512) * 512]
    opener = {"": None, "gz": gzip_bytes, "bz2": bz2.compress, "xz": lzma.compress}[compression]
    dest.write_bytes(data if opener is None else opener(data))
    return dest


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


# What APTrust 2.3 asks of a bag beyond RFC 8493, met.
APTRUST_INFO = {"Title": "Field notes", "Access": "Institution", "Storage-Option": "Standard"}
BTR_INFO = {
    "Source-Organization": "Example Lab",
    "Bagging-Date": "2026-12-02",
    "BagIt-Profile-Identifier": (
        "https://github.com/dpscollaborative/btr_bagit_profile/releases/download/1.0/"
        "btr-bagit-profile.json"
    ),
}


def aptrust_bag(root: Path, name: str = "bag1", **tags: str | None) -> Path:
    """A bag that keeps every rule of APTrust 2.3 (once tarred as ``name.tar``):
    md5 and sha256 manifests, aptrust-info.txt with its tags (``tags`` changes
    them; None removes one)."""
    return make_bag_dir(
        root, name, algorithms=("md5", "sha256"), aptrust_info={**APTRUST_INFO, **tags}
    )


def btr_bag(root: Path, name: str = "bag1", **tags: str | None) -> Path:
    """A bag that keeps every rule of BTR 1.0 (``tags`` changes bag-info.txt's
    tags; None removes one). bagit-python writes Payload-Oxum itself."""
    bag_dir = make_bag_dir(root, name, algorithms=("sha512",), info=BTR_INFO)
    for label, value in tags.items():
        set_tag(bag_dir, "bag-info.txt", label, value)
    return bag_dir


def to_zip(bag_dir: Path, dest: Path | None = None) -> Path:
    """``bag_dir`` as a zip with one top-level directory named like the bag."""
    dest = dest or bag_dir.with_name(bag_dir.name + ".zip")
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
        for dirpath, dirnames, filenames in os.walk(bag_dir):
            dirnames.sort()
            rel = Path(dirpath).relative_to(bag_dir.parent)
            archive.write(dirpath, rel.as_posix() + "/")
            for name in sorted(filenames):
                archive.write(Path(dirpath) / name, (rel / name).as_posix())
    return dest


class TarBuilder:
    """Writes a tar entry by entry: a good bag first if asked, then crafted entries."""

    def __init__(self, dest: Path, *, format: int = tarfile.PAX_FORMAT) -> None:
        self.dest = dest
        self._tar = tarfile.open(  # noqa: SIM115 (closed by close())
            dest, "w", format=format, encoding="utf-8", errors="surrogateescape"
        )

    def bag(self, bag_dir: Path, arcname: str | None = None) -> TarBuilder:
        self._tar.add(bag_dir, arcname=arcname or bag_dir.name)
        return self

    def file(self, name: str, data: bytes = b"x\n") -> TarBuilder:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data))
        return self

    def dir(self, name: str) -> TarBuilder:
        return self.special(name, tarfile.DIRTYPE)

    def special(self, name: str, kind: bytes, linkname: str = "") -> TarBuilder:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            info.devmajor, info.devminor = 1, 3
        self._tar.addfile(info)
        return self

    def close(self) -> Path:
        self._tar.close()
        return self.dest
