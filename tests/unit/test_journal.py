from dataclasses import replace
from pathlib import Path

from stagebox.client.journal import Journal, journal_path
from stagebox.client.scan import LocalFile

SHA = "ab" * 32


def local(**names: str) -> LocalFile:
    fields = {"dataset": "ds", "directory": "", "filename": "f.bin", **names}
    return LocalFile(Path("/data/ds/f.bin"), size=10, mtime_ns=111, **fields)  # type: ignore[arg-type]


def test_stored_files_are_remembered_by_size_and_mtime(tmp_path):
    journal = Journal(tmp_path / "j.db", uploader="u1")
    f = local()
    journal.record_upload(f.path, 10, 111, 7, "http://server/files/abc")
    assert journal.open_upload(f.path) == "http://server/files/abc"
    journal.record_stored([(f, SHA, 7)])
    seen = journal.seen([f])
    assert journal.unchanged_sha256(f, seen) == SHA
    assert journal.unchanged_sha256(replace(f, mtime_ns=112), seen) is None  # touched since
    assert journal.unchanged_sha256(replace(f, size=11), seen) is None  # grew since
    assert journal.open_upload(f.path) is None  # stored clears the open upload
    journal.close()
    again = Journal(tmp_path / "j.db", uploader="u1")  # survives a restart
    assert again.unchanged_sha256(f, again.seen([f])) == SHA


def test_another_uploader_owner_experiment_or_dataset_is_another_key(tmp_path):
    journal = Journal(tmp_path / "j.db", uploader="u1")
    f = local(owner="alice", experiment="e1")
    journal.record_stored([(f, SHA, 7)])
    others = [
        replace(f, owner="bob"),
        replace(f, experiment="e2"),
        replace(f, owner=None),
        replace(f, dataset="other"),
        replace(f, directory="sub"),
    ]
    seen = journal.seen([f, *others])
    assert list(seen) == [journal.key(f)]
    journal.uploader = "u2"  # another token's uploader
    assert journal.seen([f]) == {}


def test_one_journal_per_server(monkeypatch, tmp_path):
    monkeypatch.setenv("STAGEBOX_STATE_DIR", str(tmp_path))
    a = journal_path("https://a.example.org")
    assert a == journal_path("https://a.example.org/")
    assert a != journal_path("https://b.example.org")
    assert a.parent == tmp_path
