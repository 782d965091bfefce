import io
import json
from pathlib import Path

from stagebox.cli.upload import JsonReport
from stagebox.client.progress import FileResult, ProgressEvent
from stagebox.client.scan import LocalFile
from stagebox.client.uploader import MAX_FAILURES_KEPT, UploadReport


def result(i: int, state) -> FileResult:
    file = LocalFile(Path(f"/d/f{i}"), "ds", "", f"f{i}", size=10, mtime_ns=1)
    sent = 10 if state == "verified" else 0
    return FileResult(file, state, sent, "boom" if state == "failed" else None)


def test_report_keeps_counters_not_results():
    report = UploadReport()
    for i in range(MAX_FAILURES_KEPT + 50):
        report.add(result(i, "failed"))
    report.add(result(0, "verified"))
    report.add(result(1, "skipped"))
    assert report.counts == {"verified": 1, "skipped": 1, "failed": MAX_FAILURES_KEPT + 50}
    assert len(report.failures) == MAX_FAILURES_KEPT  # bounded, whatever the tree
    assert report.totals()["files"] == MAX_FAILURES_KEPT + 52
    assert report.totals()["bytes_sent"] == 10
    assert not report.ok


def test_json_report_streams_one_object():
    out = io.StringIO()
    stream = JsonReport(out)
    report = UploadReport()
    for i, state in enumerate(["verified", "failed", "skipped"]):
        r = result(i, state)
        report.add(r)
        stream(ProgressEvent("started", file=r.file))
        stream(ProgressEvent("finished", file=r.file, result=r))
    stream.close(report, error="server went away")
    parsed = json.loads(out.getvalue())
    assert [f["state"] for f in parsed["files"]] == ["verified", "failed", "skipped"]
    assert parsed["totals"]["failed"] == 1
    assert parsed["error"] == "server went away"


def test_json_report_with_no_files_is_valid():
    out = io.StringIO()
    stream = JsonReport(out)
    stream.close(UploadReport())
    assert json.loads(out.getvalue())["files"] == []
