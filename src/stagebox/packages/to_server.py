"""``push --server``: the package through the stagebox http path, ending verified.

The package and its extra files become datafiles of one dataset (the package's
uploadType unless told otherwise), in a directory named after the package's
sha256. A server never replaces a verified file, so each distinct package is
kept as its own version; pushing the same bytes again finds them already there.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from stagebox.client.api import StageboxClient
from stagebox.client.journal import Journal
from stagebox.client.progress import ProgressCallback, ProgressEvent, ignore
from stagebox.client.scan import LocalFile
from stagebox.client.uploader import Uploader, UploadOptions
from stagebox.errors import TransportError
from stagebox.names import clean_component
from stagebox.packages.push import FileOutcome, PushOutcome
from stagebox.packages.record import Package

VERSION_DIGITS = 16


@dataclass(frozen=True)
class ServerDestination:
    server: str
    token: str
    dataset: str | None = None
    verify_tls: bool | ssl.SSLContext = True

    def dataset_for(self, package: Package) -> str:
        return clean_component(self.dataset or package.upload_type, "dataset")

    def target(self, package: Package) -> str:
        return f"{self.server.rstrip('/')}#dataset={self.dataset_for(package)}"


def push_server(
    package: Package, destination: ServerDestination, progress: ProgressCallback = ignore
) -> PushOutcome:
    """Upload the package's files; every one must end verified (or be there already)."""
    dataset = destination.dataset_for(package)
    directory = package.file.sha256[:VERSION_DIGITS]
    files = []
    for file in package.files:
        st = file.path.stat()
        if st.st_size != file.size:
            raise TransportError(f"{file.path} changed since it was checked")
        files.append(
            LocalFile(file.path, dataset, directory, file.name, st.st_size, st.st_mtime_ns)
        )
    client = StageboxClient(
        destination.server, destination.token, verify_tls=destination.verify_tls
    )
    journal = Journal.for_server(destination.server)
    outcome = PushOutcome(destination.target(package))
    states: dict[str, str] = {}

    def listen(event: ProgressEvent) -> None:
        result = event.result
        if event.kind == "finished" and result is not None:
            states[result.file.filename] = result.state
            if result.state != "failed":
                outcome.files.append(
                    FileOutcome(
                        result.file.filename,
                        "present" if result.state == "skipped" else "sent",
                        result.bytes_sent,
                    )
                )
        progress(event)

    try:
        options = UploadOptions(threads=2, method="http")
        report = Uploader(client, journal, options, listen).run(files)
    finally:
        client.close()
        journal.close()
    if not report.ok:
        first = report.failures[0]
        raise TransportError(
            f"push to {destination.server} failed: {first.file.filename}: {first.error}"
        )
    missing = [f.name for f in package.files if states.get(f.name) not in ("verified", "skipped")]
    if missing:
        raise TransportError(f"push to {destination.server}: not verified: {', '.join(missing)}")
    return outcome
