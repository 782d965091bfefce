"""The instrument PC left alone: `stagebox watch` uploads what appears, as it appears."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stagebox.client.journal import journal_path
from tests.servers import StageboxServer, stagebox_cmd


class Watch:
    """``stagebox watch SRC --interval 1s`` as a user starts it; its log in a file."""

    def __init__(self, server: StageboxServer, token: str, src: Path, *args: str) -> None:
        self.log = src.parent / "watch.log"
        self.stderr = src.parent / "watch.stderr"
        argv = stagebox_cmd(
            "watch", str(src), "--server", server.url, "--token", token,
            "--interval", "1s", "--log", str(self.log), *args,
        )  # fmt: skip
        with open(self.stderr, "w") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def wait_line(self, pattern: str, count: int = 1, timeout: float = 20.0) -> list[str]:
        """Wait until ``count`` log lines match ``pattern``; they are returned."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines() if re.search(pattern, line)]
            if len(found) >= count:
                return found
            assert self.proc.poll() is None, f"the watcher exited:\n{self.stderr.read_text()}"
            time.sleep(0.05)
        raise AssertionError(f"no {count} lines like {pattern!r} in:\n" + "\n".join(self.lines()))

    def terminate(self) -> tuple[int, float]:
        """SIGTERM; the exit code and the seconds it took to exit."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=10)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def start_watch(server: StageboxServer, token: str) -> Iterator:
    started: list[Watch] = []

    def start(src: Path, *args: str) -> Watch:
        started.append(Watch(server, token, src, *args))
        return started[-1]

    yield start
    for w in started:
        w.kill()


def datafiles(server: StageboxServer, token: str) -> dict[str, dict]:
    """The newest version of each file the server lists, by name, in any state (a new
    client each time: the server may have been restarted under it)."""
    items = httpx.get(
        f"{server.url}/api/v1/datafiles",
        headers={"Authorization": f"Bearer {token}"},
        params={"limit": 1000},
        timeout=10,
    ).json()["items"]
    return {i["filename"]: i for i in items}


def stored(server: StageboxServer, token: str) -> dict[str, dict]:
    return {n: i for n, i in datafiles(server, token).items() if i["state"] == "stored"}


def wait_stored(server: StageboxServer, token: str, *names: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = stored(server, token)
        if all(n in found for n in names):
            return found
        time.sleep(0.1)
    raise AssertionError(f"not all of {names} stored: {sorted(stored(server, token))}")


def tree(tmp_path: Path, files: dict[str, bytes]) -> Path:
    src = tmp_path / "src"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    return src


def status() -> dict:
    out = subprocess.run(stagebox_cmd("status", "--json"), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_files_that_appear_between_scans_are_stored_and_status_tells_the_scans(
    server: StageboxServer, token: str, tmp_path: Path, start_watch
):
    # given a watched tree whose first scan has stored what was there
    src = tree(tmp_path, {"ds/a.txt": b"alpha"})
    watch = start_watch(src)
    watch.wait_line(r"scan 1: 1 new, 0 changed, 0 waiting \(growing\), 1 stored, 0 failed")
    # when files appear between scans, one of them large enough to be streamed
    big = os.urandom(3 << 20)
    (src / "ds" / "b.txt").write_bytes(b"beta")
    (src / "ds" / "raw").mkdir()
    (src / "ds" / "raw" / "big.bin").write_bytes(big)
    # then the server stores them, and the log names each file once
    found = wait_stored(server, token, "a.txt", "b.txt", "big.bin")
    assert found["big.bin"]["sha256"] == hashlib.sha256(big).hexdigest()
    assert found["big.bin"]["directory"] == "raw"
    watch.wait_line(r"stored ds/raw/big\.bin \(3\.0 MiB\)")
    assert len([line for line in watch.lines() if "stored ds/b.txt" in line]) == 1
    watch.wait_line(r"scan \d+: 0 new, 0 changed, 0 waiting \(growing\), 3 stored, 0 failed")
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d scan 1: ", watch.wait_line("scan 1:")[0])

    # and `stagebox status` shows the scans, while it watches and once it stopped
    [view] = status()["watches"]
    assert view["src"] == os.path.realpath(src) and view["server"] == server.url
    assert view["running"] is True
    assert view["scans"] and all(s["outcome"] == "ok" for s in view["scans"])
    assert watch.terminate()[0] == 0
    [view] = status()["watches"]
    assert view["running"] is False and view["state"].startswith("stopped at")
    assert sum(s["new"] for s in view["scans"]) >= 1
    text = subprocess.run(stagebox_cmd("status"), capture_output=True, text=True).stdout
    assert f"{os.path.realpath(src)} -> {server.url}: stopped at" in text
    assert "3 stored, 0 failed" in text


def test_a_growing_file_waits_until_it_stops_changing(
    server: StageboxServer, token: str, tmp_path: Path, start_watch
):
    # given a watcher past its first scan
    src = tree(tmp_path, {"ds/a.txt": b"alpha"})
    watch = start_watch(src)
    watch.wait_line(r"scan 1: ")
    # when an instrument writes a file for several scans
    growing = src / "ds" / "acquisition.dat"
    with open(growing, "ab") as out:
        first = len(watch.lines())
        while len([x for x in watch.lines()[first:] if re.search(r"scan \d+: ", x)]) < 3:
            out.write(os.urandom(50_000))
            out.flush()
            # then, while it grows, nothing of it is registered
            assert "acquisition.dat" not in datafiles(server, token)
            time.sleep(0.2)
        watch.wait_line(r"scan \d+: 0 new, 0 changed, 1 waiting \(growing\)", count=2)
    # and once it stops changing it is stored, whole, as one version
    found = wait_stored(server, token, "acquisition.dat")
    assert found["acquisition.dat"]["sha256"] == hashlib.sha256(growing.read_bytes()).hexdigest()
    assert found["acquisition.dat"]["size"] == growing.stat().st_size
    watch.wait_line(r"scan \d+: 1 new, 0 changed, 0 waiting")
    assert not [line for line in watch.lines() if "failed ds/" in line]
    assert watch.terminate()[0] == 0


def test_the_watcher_carries_on_when_the_server_comes_back(
    server: StageboxServer, token: str, tmp_path: Path, start_watch
):
    # given a watcher that stored a first file
    src = tree(tmp_path, {"ds/a.txt": b"alpha"})
    watch = start_watch(src)
    wait_stored(server, token, "a.txt")
    # when the server is down for several scans while files appear
    server.stop()
    (src / "ds" / "during.txt").write_bytes(b"written while the server was down")
    watch.wait_line(r"server unreachable \(.*(refused|reach).*\).*next try in", count=3)
    assert watch.proc.poll() is None
    # and it is started again, on the same port and data dir
    server.start()
    # then the watcher, still the same process, stores what appeared meanwhile
    wait_stored(server, token, "a.txt", "during.txt", timeout=30)
    watch.wait_line(r"stored ds/during\.txt")
    assert watch.proc.poll() is None
    # the scans while it was away backed off, and the journal kept what was stored
    tries = watch.wait_line(r"next try in")
    delays = [int(re.search(r"next try in (\d+) s", t)[1]) for t in tries]  # type: ignore[index]
    assert delays[:3] == sorted(delays[:3]) and delays[2] > delays[0], delays
    assert watch.terminate()[0] == 0


def test_sigterm_stops_it_within_a_second_at_a_file_boundary(
    server: StageboxServer, token: str, tmp_path: Path, start_watch
):
    # given small files and a large one sent slowly (8 MB/s), part of it staged
    files = {f"ds/small{i:02}.txt": os.urandom(1000) for i in range(20)}
    src = tree(tmp_path, {**files, "ds/big.bin": os.urandom(40 << 20)})
    watch = start_watch(src, "--bwlimit", "8")
    staging = server.data_dir / "staging"
    deadline = time.monotonic() + 20
    while max((p.stat().st_size for p in staging.rglob("*") if p.is_file()), default=0) < 4 << 20:
        assert time.monotonic() < deadline, "nothing staged"
        time.sleep(0.05)
    # when it is sent SIGTERM
    code, seconds = watch.terminate()
    # then it exits 0 within a second, saying so
    assert code == 0, watch.stderr.read_text()
    assert seconds < 1.0, seconds
    assert re.search(r"stopping \(SIGTERM\)", "\n".join(watch.lines()))
    assert watch.lines()[-1].endswith(" stopped")
    # and the journal is whole: a following upload sends only the rest of the large file
    journal = sqlite3.connect(journal_path(server.url))
    assert journal.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    journal.close()
    proc = subprocess.run(
        stagebox_cmd("upload", str(src), "--server", server.url, "--token", token, "--json"),
        capture_output=True,
        text=True,
    )
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, [f["error"] for f in report["files"] if f["state"] == "failed"]
    assert report["totals"]["failed"] == 0
    assert report["totals"]["verified"] + report["totals"]["skipped"] == 21
    states = {f["filename"]: f["state"] for f in report["files"]}
    assert states["big.bin"] == "verified"
    assert report["totals"]["bytes_sent"] < 40 << 20  # resumed, not sent again


def test_a_refused_token_ends_it_with_exit_2_and_one_line(server: StageboxServer, tmp_path: Path):
    src = tree(tmp_path, {"ds/a.txt": b"alpha"})
    proc = subprocess.run(
        stagebox_cmd("watch", str(src), "--server", server.url, "--token", "sbx_not-a-token"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (
        "stagebox: the server refused the token (unknown or revoked)"
    )
