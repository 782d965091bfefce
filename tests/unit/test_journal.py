from pathlib import Path

from stagebox.client.journal import Journal, journal_path


def test_verified_files_are_remembered_by_size_and_mtime(tmp_path):
    journal = Journal(tmp_path / "j.db")
    p = Path("/data/ds/f.bin")
    journal.record_upload(p, 10, 111, 7, "http://server/files/abc")
    assert journal.open_upload(p) == "http://server/files/abc"
    journal.record_verified([(p, 10, 111, "ab" * 32, 7)])
    assert journal.is_verified(p, 10, 111)
    assert not journal.is_verified(p, 10, 112)  # touched since
    assert not journal.is_verified(p, 11, 111)  # grew since
    assert journal.open_upload(p) is None  # verified clears the open upload
    assert journal.verified_among([str(p), "/elsewhere"]) == {str(p): (10, 111)}
    journal.close()
    assert Journal(tmp_path / "j.db").is_verified(p, 10, 111)  # survives a restart


def test_one_journal_per_server(monkeypatch, tmp_path):
    monkeypatch.setenv("STAGEBOX_STATE_DIR", str(tmp_path))
    a = journal_path("https://a.example.org")
    assert a == journal_path("https://a.example.org/")
    assert a != journal_path("https://b.example.org")
    assert a.parent == tmp_path
