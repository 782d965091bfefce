"""What a package is, and where it has already been pushed (``NAME.push.json``)."""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stagebox.errors import ChecksumMismatch, InvalidInput
from stagebox.names import clean_component
from stagebox.packages.archive import read_package
from stagebox.packages.pack import file_sha256


@dataclass(frozen=True)
class PushFile:
    """A file that goes to the target: the package itself or one of its extra files."""

    path: Path
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Package:
    path: Path
    file: PushFile
    upload_type: str
    action: str
    extras: tuple[PushFile, ...]

    @property
    def files(self) -> tuple[PushFile, ...]:
        """Extra files first: the package arriving last says that everything has."""
        return (*self.extras, self.file)

    @classmethod
    def read(cls, path: Path) -> Package:
        """Open a package from ``pack``; its extra push files must be as they were packed."""
        path = path.absolute()
        name = clean_component(path.name, "package name")
        manifest = read_package(path).manifest
        upload_type = str(manifest.get("uploadType") or "")
        if not upload_type:
            raise InvalidInput(f"{path}: package.yml", "has no uploadType")
        extras = []
        for i, extra in enumerate(manifest.get("extraPushFiles") or ()):
            where = f"{path}: package.yml: extraPushFiles[{i}]"
            if extra is None:
                continue  # missing when packed; reported then
            try:
                local = Path(str(extra["path"]))
                expected = PushFile(
                    local, str(extra["name"]), int(extra["size"]), str(extra["sha256"])
                )
            except (KeyError, TypeError, ValueError):
                raise InvalidInput(where, "needs name, size, sha256 and path") from None
            clean_component(expected.name, f"{where}.name")
            if expected.name == name:
                raise InvalidInput(where, f"has the package's own name {name!r}")
            try:
                size = local.stat().st_size
            except OSError as exc:
                raise InvalidInput(
                    str(local), f"extra push file cannot be read: {exc.strerror}"
                ) from None
            actual = file_sha256(local) if size == expected.size else ""
            if actual != expected.sha256:
                raise InvalidInput(
                    str(local),
                    "extra push file changed since the package was packed; run stagebox pack again",
                )
            extras.append(expected)
        st = path.stat()
        own = PushFile(path, name, st.st_size, file_sha256(path))
        return cls(path, own, upload_type, str(manifest.get("action") or ""), tuple(extras))


def record_path(package: Path) -> Path:
    return package.with_name(package.name + ".push.json")


class PushRecord:
    """``NAME.push.json`` beside the package: for each target, what arrived there and when."""

    def __init__(self, package: Package) -> None:
        self.package = package
        self.path = record_path(package.path)
        self.targets: dict[str, Any] = {}
        try:
            doc = json.loads(self.path.read_text())
            if isinstance(doc, dict) and isinstance(doc.get("targets"), dict):
                self.targets = doc["targets"]
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            self.targets = {}  # unreadable: pushing again is the safe answer

    def _fingerprint(self) -> list[dict[str, Any]]:
        return [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.package.files]

    def pushed(self, target: str) -> dict[str, Any] | None:
        """The record of this package's exact bytes (and extras) at ``target``, if any."""
        entry = self.targets.get(target)
        if (
            isinstance(entry, dict)
            and entry.get("sha256") == self.package.file.sha256
            and entry.get("files") == self._fingerprint()
        ):
            return entry
        return None

    def add(self, target: str, detail: dict[str, Any] | None = None) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        entry = {
            "target": target,
            "sha256": self.package.file.sha256,
            "time": now.isoformat().replace("+00:00", "Z"),
            "files": self._fingerprint(),
            **(detail or {}),
        }
        self.targets[target] = entry
        doc = {"package": self.package.file.name, "targets": self.targets}
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f, indent=2, sort_keys=True)
                f.write("\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return entry


def check_sha256(name: str, expected: str, actual: str) -> None:
    if expected != actual:
        raise ChecksumMismatch("sha256", expected, f"{actual} ({name})")
