import io
import json
from pathlib import Path

from stagebox.cli.upload import JsonReport, OmissionLog
from stagebox.client.scan import Omission
from stagebox.client.uploader import UploadReport


def test_many_omissions_spill_to_disk_and_the_json_stays_one_object():
    # given more omissions than the log keeps in memory (1 MiB of JSON lines)
    log = OmissionLog(shown=3)
    for i in range(20_000):
        log(Omission(Path(f"/src/ds/tmp/file-{i:05}.tmp"), "excluded", "matches --exclude *.tmp"))
    log(Omission(Path("/src/ds/locked"), "unreadable", "Permission denied"))
    out = io.StringIO()
    try:
        # when the report closes
        JsonReport(out).close(UploadReport(), log)
    finally:
        log.close()
    # then every omission is listed, in order, and counted; the summary keeps a few
    parsed = json.loads(out.getvalue())
    assert len(parsed["omitted"]) == 20_001
    assert parsed["omitted"][0]["path"] == "/src/ds/tmp/file-00000.tmp"
    assert parsed["omitted"][-1] == {
        "path": "/src/ds/locked",
        "reason": "unreadable",
        "detail": "Permission denied",
    }
    assert parsed["totals"]["omitted"] == 20_001
    assert parsed["omitted_by_reason"] == {"unreadable": 1, "excluded": 20_000}
    assert [len(kept) for kept in log.first.values()] == [3, 1]


def test_no_omissions_is_an_empty_list():
    log = OmissionLog()
    out = io.StringIO()
    JsonReport(out).close(UploadReport(), log, error="server went away")
    log.close()
    parsed = json.loads(out.getvalue())
    assert parsed["omitted"] == [] and parsed["totals"]["omitted"] == 0
    assert parsed["error"] == "server went away"
