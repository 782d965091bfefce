"""The instrument PC owner's story: a folder tree reaches the facility, verified."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.servers import StageboxServer, stagebox_cmd

TUS = {"Tus-Resumable": "1.0.0"}


def make_tree(root: Path, layout: dict[str, bytes]) -> Path:
    for rel, data in layout.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def upload_cmd(server: StageboxServer, token: str, src: Path, *args: str) -> list[str]:
    return stagebox_cmd(
        "upload", str(src), "--server", server.url, "--token", token, "--json", *args
    )


def run_upload(server: StageboxServer, token: str, src: Path, *args: str) -> tuple[int, dict]:
    proc = subprocess.run(upload_cmd(server, token, src, *args), capture_output=True, text=True)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def stored_files(server: StageboxServer) -> dict[str, bytes]:
    store = server.data_dir / "store"
    return {
        str(p.relative_to(store)).split("/", 4)[4]: p.read_bytes()
        for p in store.rglob("*")
        if p.is_file()
    }


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def staged_size(server: StageboxServer) -> int:
    files = [p for p in (server.data_dir / "staging").rglob("*") if p.is_file()]
    return max((p.stat().st_size for p in files), default=0)


def start_slow_upload(
    server: StageboxServer, token: str, src: Path, staged_at_least: int
) -> subprocess.Popen[bytes]:
    """An upload of SRC as dataset "d" at 8 MB/s, returned once some bytes are staged."""
    proc = subprocess.Popen(
        upload_cmd(server, token, src, "--dataset", "d", "--bwlimit", "8"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for(lambda: staged_size(server) > staged_at_least, what="some bytes staged")
    return proc


def all_datafiles(api: httpx.Client) -> list[dict]:
    items, cursor = [], None
    while True:
        page = api.get("/api/v1/datafiles", params={"cursor": cursor} if cursor else {}).json()
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items


def test_tree_is_verified_and_stored_then_rerun_sends_nothing(
    server: StageboxServer, token: str, api: httpx.Client, tmp_path: Path
):
    # given an experiment/dataset tree with nested folders, an empty and a large file
    big = os.urandom(3 << 20)
    src = make_tree(
        tmp_path / "src",
        {
            "exp1/dsA/a.txt": b"alpha",
            "exp1/dsA/raw/deep/b.bin": os.urandom(5000),
            "exp1/dsA/empty.dat": b"",
            "exp1/dsB/big.bin": big,
            "exp2/dsA/c.txt": b"gamma",
            "stray.txt": b"above the dataset level: not uploaded",
        },
    )
    # when it is uploaded
    rc, report = run_upload(server, token, src, "--structure", "experiment/dataset")
    # then every file is verified and the server stores the same bytes
    assert rc == 0, report
    assert report["totals"]["files"] == 5
    assert report["totals"]["verified"] == 5
    assert report["totals"]["bytes_sent"] == 5 + 5000 + len(big) + 5
    by_name = {(f["dataset"], f["directory"], f["filename"]): f for f in report["files"]}
    assert by_name[("dsA", "raw/deep", "b.bin")]["state"] == "verified"
    items = wait_for(
        lambda: (i := all_datafiles(api)) and all(x["state"] == "stored" for x in i) and i,
        what="every datafile stored",
    )
    assert len(items) == 5
    for item in items:
        path = src / item["experiment"] / item["dataset"] / item["directory"] / item["filename"]
        assert item["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert api.get(f"/api/v1/datafiles/{item['id']}/content").content == path.read_bytes()
    assert sorted(stored_files(server).values(), key=len)[-1] == big

    # when the same tree is uploaded again, nothing is read or sent
    rc, again = run_upload(server, token, src, "--structure", "experiment/dataset")
    assert rc == 0
    assert again["totals"]["skipped"] == 5
    assert again["totals"]["bytes_sent"] == 0


def test_rerun_with_a_fresh_journal_is_skipped_by_the_server(
    server: StageboxServer, token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    src = make_tree(tmp_path / "src", {"f1": b"one", "f2": os.urandom(2 << 20)})
    assert run_upload(server, token, src, "--dataset", "d")[0] == 0
    monkeypatch.setenv("STAGEBOX_STATE_DIR", str(tmp_path / "another-pc"))
    rc, report = run_upload(server, token, src, "--dataset", "d")
    assert rc == 0
    assert [f["state"] for f in report["files"]] == ["skipped", "skipped"]


def test_include_exclude_and_min_age_select_files(
    server: StageboxServer, token: str, tmp_path: Path
):
    src = make_tree(
        tmp_path / "src",
        {"ds/a.tif": b"1", "ds/b.tif": b"2", "ds/notes.txt": b"3", "ds/tmp/c.tif": b"4"},
    )
    old = time.time() - 3600
    for p in src.rglob("*.tif"):
        os.utime(p, (old, old))
    os.utime(src / "ds/b.tif", None)  # just written: too young
    rc, report = run_upload(
        server, token, src, "--include", "*.tif", "--exclude", "tmp/*", "--min-age", "5"
    )
    assert rc == 0
    assert [f["filename"] for f in report["files"]] == ["a.tif"]


def test_client_killed_mid_file_resumes_without_resending(
    server: StageboxServer, token: str, api: httpx.Client, tmp_path: Path
):
    # given a 24 MB file sent at 8 MB/s
    data = os.urandom(24_000_000)
    src = make_tree(tmp_path / "src", {"big.bin": data})
    proc = start_slow_upload(server, token, src, staged_at_least=4_000_000)
    # when the client is killed -9 part way through
    proc.kill()
    proc.communicate()
    item = api.get("/api/v1/datafiles").json()["items"][0]
    url = api.get(f"/api/v1/datafiles/{item['id']}").json()["upload_url"]

    def settled() -> int:
        # The server finishes writing what it received, then records it.
        recorded = api.get(f"/api/v1/datafiles/{item['id']}").json()["bytes_staged"]
        head = httpx.head(url, headers={"Authorization": f"Bearer {token}", **TUS})
        offset = int(head.headers["Upload-Offset"])
        return offset if recorded == offset > 0 else 0

    already = wait_for(settled, what="the partial upload recorded")
    assert 0 < already < len(data)
    # then a rerun sends only the rest and the stored file is whole
    rc, report = run_upload(server, token, src, "--dataset", "d")
    assert rc == 0, report
    assert report["files"][0]["state"] == "verified"
    assert report["files"][0]["bytes_sent"] == len(data) - already
    wait_for(lambda: stored_files(server).get("big.bin") == data, what="stored whole")


def test_server_killed_mid_upload_client_resumes_after_restart(
    server: StageboxServer, token: str, tmp_path: Path
):
    data = os.urandom(20_000_000)
    src = make_tree(tmp_path / "src", {"big.bin": data})
    proc = start_slow_upload(server, token, src, staged_at_least=4_000_000)
    # when the server dies without warning and comes back on the same port
    server.kill()
    time.sleep(0.5)
    server.start()
    # then the client's retries resume the upload and the file verifies
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["files"][0]["state"] == "verified"
    wait_for(lambda: stored_files(server).get("big.bin") == data, what="stored whole")


def test_file_changing_during_upload_fails_and_nothing_is_stored(
    server: StageboxServer, token: str, api: httpx.Client, tmp_path: Path
):
    src = make_tree(tmp_path / "src", {"growing.log": os.urandom(16_000_000)})
    proc = start_slow_upload(server, token, src, staged_at_least=2_000_000)
    with open(src / "growing.log", "ab") as f:
        f.write(b"appended while sending")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    result = json.loads(out)["files"][0]
    assert result["state"] == "failed"
    assert "changed during upload" in result["error"]
    assert stored_files(server) == {}
    assert api.get("/api/v1/datafiles").json()["items"] == []  # the partial upload was discarded


def test_two_uploaders_at_once_each_get_their_own_datasets(
    server: StageboxServer, token: str, tmp_path: Path
):
    bob = server.add_uploader("bob")
    trees = {
        "alice": make_tree(
            tmp_path / "a", {f"ds/{i}.bin": os.urandom(3000 + i) for i in range(60)}
        ),
        "bob": make_tree(tmp_path / "b", {f"ds/{i}.bin": os.urandom(4000 + i) for i in range(60)}),
    }
    trees["alice"].joinpath("ds/big.bin").write_bytes(os.urandom(3 << 20))
    procs = {
        who: subprocess.Popen(
            upload_cmd(server, tok, trees[who]), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for who, tok in (("alice", token), ("bob", bob))
    }
    for who, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (who, err)
        assert json.loads(out)["totals"]["verified"] == (61 if who == "alice" else 60)
    for who, tok in (("alice", token), ("bob", bob)):
        listing = httpx.get(
            f"{server.url}/api/v1/datafiles",
            params={"limit": 1000},
            headers={"Authorization": f"Bearer {tok}"},
        ).json()["items"]
        assert len(listing) == (61 if who == "alice" else 60)


def test_missing_token_is_a_usage_error(server: StageboxServer, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "STAGEBOX_TOKEN"}
    src = make_tree(tmp_path / "src", {"ds/a": b"a"})
    proc = subprocess.run(
        stagebox_cmd("upload", str(src), "--server", server.url),
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2
    assert "token" in proc.stderr


def test_revoked_token_fails_every_file(server: StageboxServer, token: str, tmp_path: Path):
    server.admin("uploader", "revoke", "alice")
    src = make_tree(tmp_path / "src", {"ds/a": b"a"})
    proc = subprocess.run(upload_cmd(server, token, src), capture_output=True, text=True)
    assert proc.returncode != 0
    assert "revoked" in proc.stderr or "revoked" in proc.stdout
