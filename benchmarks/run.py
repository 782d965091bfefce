"""``python -m benchmarks.run --quick|--full``: run the cases, write benchmarks/results/latest.*

``--only CASE`` (repeatable) runs some cases; such a partial run writes its latest.* under
benchmarks/work/partial, and a quick run under benchmarks/work/quick, unless ``--results
DIR`` says where: only a full run of every case replaces the committed results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from benchmarks import report
from benchmarks.cases import AWS, CASES, CaseResult, execute, node_dir
from benchmarks.servers import Sshd
from benchmarks.sides import Bench, Profile
from benchmarks.tus import tus_node_versions
from benchmarks.workloads import GiB, MiB

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
RESULTS = HERE / "results"
PARTIAL = WORK / "partial"
QUICK = WORK / "quick"  # a smoke test never replaces the committed full results

PROFILES = {
    # quick: under 3 minutes for every case on 2 shared cores, workloads generated included
    "quick": Profile(
        "quick",
        64 * MiB,
        500,
        20,
        4096,
        256 * MiB,
        1,
        3,
        0,
        1,
        sftp_mem_runs=1,
        all_peers=False,
        audit_objects=4,
        audit_runs=3,
        sftpd_mem_runs=1,
    ),
    "full": Profile("full", 1 * GiB, 10_000, 20, 4096, 4 * GiB, 1, 3, 0, 2, sftp_mem_runs=3),
}

METHOD = [
    "Sides alternate run by run (stagebox, peer, stagebox, peer, ...); the first round is a "
    "warm-up, recorded in latest.json but not counted. Ratios are stagebox/peer per round, "
    "then the median of those ratios.",
    "Every stagebox run gets a fresh server process and data dir (a copy of one holding only "
    "the uploader and the case's boxes, made once by `stagebox admin`; the server is started "
    "before the clock starts), a fresh client journal (STAGEBOX_STATE_DIR) "
    "and a fresh dataset name; its --json totals must say files == verified, 0 skipped, "
    "0 failed. scp/rsync write into an emptied folder whose contents are checked afterwards.",
    "The quick profile is a smoke test: sizes small enough (64 MiB, 500 files) that start-up "
    "(Python's, the server's, ssh's) weighs on every ratio, and only each case's first peer "
    "(the one its target names; the case's notes say which it leaves out). The figures to "
    "quote come from the full profile, which runs every peer.",
    "`sync` runs (untimed) before every timed run. Workloads are read from the page cache "
    "by both sides alike (the warm-up reads them first).",
    "Wall time spans spawn to exit of the client command (python start-up included for "
    "stagebox). Throughput: MB/s = 10^6 bytes/s, or files/s.",
    "CPU s: client = user+sys of the client tree from wait4(); server = delta of user+sys "
    "(self and reaped children) of the stagebox server or of the sshd listener (sessions "
    "are awaited before reading it).",
    "Peak RSS: every 50 ms psutil samples each process tree (client; server = stagebox "
    "server or sshd listener with its sessions); the peak is the larger of the highest "
    "summed RSS and the largest per-process kernel high-water mark (VmHWM) seen. Memory "
    "targets use the worst counted run.",
    "stagebox server runs with its defaults (durable=true: fsync before stored; O_DIRECT "
    "for large uploads; sha256 on both sides). scp/rsync do not fsync and do not verify "
    "end to end beyond the ssh MAC.",
    "sftp cases: one staging sshd, set up by the first sftp case and shared by the others, "
    "set up as tests/sshd.py does for an sshd box (the staging account's keys come from "
    "stagebox's AuthorizedKeysCommand, each forcing the relay that hands the session to "
    "`stagebox serve --sftp-sessions` over the box's socket; Subsystem sftp internal-sftp "
    "for the peers), where root also logs in with a generated key for the "
    "peers (sftp put, scp, rsync, rclone), which write into an emptied folder. Registration, "
    "approval and the first contact (--accept-new-host-key) happen once per case, untimed; "
    "each stagebox run then restores the server's data dir to the state right after the "
    "approval, empties the uploader's staging directory, starts a fresh server and uses a "
    "fresh client journal and dataset name. The timed region ends when the client exits, "
    "having seen every file verified (the server hashed the bytes as they came through the "
    "relayed session, and then moves them into the store, a rename on one filesystem).",
    "sftp cases, stagebox side: server CPU = stagebox serve + the staging sshd (its sessions, "
    "their relays and the AuthorizedKeysCommand it runs at each login); server peak RSS = "
    "the sum of the two peaks; the `stagebox serve` and `sshd` rows show each part. "
    "Peers: server = sshd. "
    "The staging sshd's CPU is read from a cgroup v2 holding the listener and everything it "
    "forks (sshd's privilege-separation monitor can exit before it reaps the session "
    "process, whose CPU would then go to init); without a writable cgroup v2 it falls back "
    "to the listener's children times. "
    "stagebox's asyncssh client prefers aes128-gcm@openssh.com; OpenSSH's tools use their "
    "default (see the negotiated cipher above). scp is OpenSSH 9's (SFTP protocol).",
    "sftpd cases (stagebox's built-in SFTP endpoint): each stagebox run is `stagebox upload "
    "--method sftp` to a fresh `stagebox serve --sftp-port N` (the endpoint is a thread of "
    "that process: server CPU and peak RSS are that process's alone), on a data dir restored "
    "to its state right after the approval (box added with --sftp-endpoint stagebox; the "
    "uploaders registered and approved while the endpoint ran, so the approval carries its "
    "host key fingerprint and the client checks its first contact with no "
    "--accept-new-host-key); the clock stops when the client exits having seen every file "
    "verified (the endpoint hashed the bytes as they came; the server then moves them into "
    "the store, a rename on one filesystem). Peers write into the harness's local sshd (the "
    "one http-big's scp uses: root with a generated key, Subsystem sftp internal-sftp; server"
    " = that sshd, its sessions' CPU from the listener's children times): sftp put -c "
    "aes128-gcm@openssh.com (the cipher stagebox's asyncssh client prefers; the target's "
    "peer) and sftp put with OpenSSH's default cipher (the negotiated cipher above); rsync -a"
    " -e ssh with the default cipher. Destinations on tmpfs (/dev/shm) for both sides: the "
    "staging box, the data dir holding the store, the peers' destination folders; both sides'"
    " are emptied after each run. A case whose destinations would not fit there (with 2 GiB "
    "of RAM to spare) puts them on the work dir's disk and says so in its notes. "
    "sftpd-memory: 5 uploaders, each its own key, token and journal, start `stagebox upload` "
    "of one file (hard-linked into 5 dataset folders) at once; server = the endpoint "
    "process's peak RSS over the five uploads; client = the largest of the five clients' "
    "peaks (each one's is in latest.json); wall time from the first spawn to the last exit; "
    "all_running_s: how long all five ran at once (the run fails if never).",
    "http-big, curl sides: curl as a stock tus client, POST (creation; Upload-Metadata "
    "filename, and dataset for stagebox) then one PATCH streaming the whole file (-T, no "
    "Expect: 100-continue), both timed as one `sh` script (client = sh and both curls). "
    "To stagebox: a fresh server per run, as for stagebox upload; the PATCH must answer 204 "
    "with Upload-Offset = the size, and the file must then be stored with the workload's "
    "sha256 (curl declares none: the server's own hash is the only check). To @tus/server "
    "(Node, @tus/file-store's FileStore, behind node's http.createServer; "
    "benchmarks/tus_server.mjs): one server for the case, its store emptied before each "
    "run; the PATCH must answer the same and the store hold one file of the size. "
    "@tus/server writes through the page cache without fsync and hashes nothing.",
    "s3: one moto server for the case (it keeps objects in memory and is far slower than a "
    "real S3: only ratios taken against it mean anything). stagebox: a fresh server whose "
    "http staging box (staging_box) is an S3 box on moto, default 16 MiB parts; the clock "
    "stops when the client has seen the file verified; then, untimed, the file must end "
    "stored (copied into the embedded permanent box, the staged object deleted). Peers, into "
    "another bucket: rclone copy (remote from RCLONE_CONFIG_MOTO_*, provider Other, with "
    "--s3-no-head since rclone 1.60 HEADs the new object with versionId=null, which moto "
    "answers 400, and then copies it again; --retries 1) and aws s3 cp (the CLI's defaults: "
    "8 MiB parts, 10 in flight); each must leave one object of the size. Every run's objects "
    "and open multipart uploads are deleted after it. Server CPU and peak RSS are stagebox "
    "serve's (the peers have no server); moto's are reported for every side (moto rows): "
    "its CPU says how much S3 work each side caused, its RSS grows from run to run as it "
    "keeps freed memory and says nothing of the client.",
    "rerun: one stagebox server and one client journal for the case; the tree is uploaded "
    "once (untimed), then every stagebox run is a rerun of that same command (--json: every "
    "file skipped, 0 verified, 0 bytes sent, exit 0). The peer: rsync -a -i -e ssh into a "
    "destination on the harness's sshd that one untimed rsync filled (its itemized list must "
    "be empty). What the client read of the files: before each run the harness sets every "
    "file's atime 10 s below its mtime (the mtime kept), and counts after it the files whose "
    "atime moved: on this relatime filesystem any read of a file's data (read or mmap, disk "
    "or page cache) moves it; stat and open do not. read_bytes (/proc/<pid>/io, read once "
    "the client has exited, before it is reaped) counts only reads that reached the disk, "
    "near 0 whenever the tree is cached, so it is recorded but proves little; rchar (bytes "
    "its read calls returned) is set against a baseline: the same command over a one-file "
    "tree already stored (Python start-up, imports, whoami).",
    "verify: one stagebox server holding both workloads (uploaded once, untimed); the harness "
    "hashes every file first (its digests are what both sides must report; this also leaves "
    "the files in the page cache). Peer: cd SRC; find . -type f -print0 | xargs -0 -s 1048576 "
    "openssl dgst -sha256, one openssl process over every file (a one-line sh wrapper per "
    "xargs batch says how many; there must be 1). Both use OpenSSL's sha256 (Python's hashlib "
    "links the same libcrypto), with SHA extensions when the CPU has them (see Machine). "
    "stagebox verify runs with its defaults and --json; its exit must be 0 and every file "
    "stored with the harness's digest.",
    "audit: the store is a data dir holding many stored objects, uploaded once (untimed). "
    "Each run gets a fresh server on a copy of it (the catalog copied, the stored objects "
    "hard-linked: they are only read, and evicted from the page cache with "
    "POSIX_FADV_DONTNEED, best effort, so the audit reads them from the disk), with "
    "STAGEBOX_AUDIT_INTERVAL_DAYS=1e-9 (every object due again as soon as checked), "
    "STAGEBOX_AUDIT_CHECK_INTERVAL=1, STAGEBOX_AUDIT_MAX_MB_S unset (25 MB/s) and "
    "STAGEBOX_AUDIT_ENABLED true or false; the clock starts 2 s after the server is up, on "
    "both sides. What the audit read during the timed upload: the server's rchar beyond "
    "the median audit-off run's (the upload's own socket reads); each audit-on run must show "
    "at least half of 25 MB/s over its wall time, else the case fails. It counts 7 rounds "
    "(quick: 3), not 3: its 0.90x threshold is within the pair-to-pair spread of this "
    "shared machine.",
]


def _first_line(cmd: list[str], stderr: bool = False) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (out.stderr if stderr else out.stdout).strip()
    return text.splitlines()[0] if text else "unavailable"


def machine_facts() -> dict[str, str]:
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    os_name = platform.platform()
    if Path("/etc/os-release").exists():
        m = re.search(r'^PRETTY_NAME="?([^"\n]*)', Path("/etc/os-release").read_text(), re.M)
        os_name = m.group(1) if m else os_name
    fs = max(
        (p for p in psutil.disk_partitions(all=True) if str(WORK).startswith(p.mountpoint)),
        key=lambda p: len(p.mountpoint),
        default=None,
    )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    with open("/proc/cpuinfo") as f:
        sha_ni = any(line.startswith("flags") and " sha_ni" in line for line in f)
    return {
        "CPU": model,
        "CPU SHA extensions": "yes (sha_ni in /proc/cpuinfo)" if sha_ni else "no sha_ni flag",
        "cores": f"{os.cpu_count()} logical, {psutil.cpu_count(logical=False)} physical",
        "RAM": f"{psutil.virtual_memory().total / GiB:.1f} GiB",
        "kernel": platform.release(),
        "OS": os_name,
        "work dir filesystem": f"{fs.fstype} on {fs.device}" if fs else "unknown",
        "load average 1/5/15 min, at start": load,
    }


def versions(sshd: Sshd | None) -> dict[str, str]:
    found = {
        "python": platform.python_version(),
        "stagebox": version("stagebox"),
        "OpenSSH": _first_line(["ssh", "-V"], stderr=True),
        "rsync": _first_line(["rsync", "--version"]),
        "curl": _first_line(["curl", "--version"]),
        "openssl": _first_line(["openssl", "version"]),
        "python hashlib's OpenSSL": ssl.OPENSSL_VERSION,
        "rclone": _first_line(["rclone", "version"]),
        "aws CLI": _first_line([AWS, "--version"]) if AWS else "not found",
        "moto": version("moto"),
        "psutil": psutil.__version__,
        "asyncssh": version("asyncssh"),
    }
    if sshd is not None:
        found["ssh cipher (negotiated)"] = negotiated_cipher(sshd)
    return found


def negotiated_cipher(sshd: Sshd) -> str:
    cmd = ["ssh", "-v", "-p", str(sshd.port), *sshd.ssh_options(), f"{sshd.user}@127.0.0.1", "true"]
    cmd[cmd.index("LogLevel=ERROR")] = "LogLevel=DEBUG1"
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    m = re.search(r"kex: client->server cipher: (\S+) MAC: (\S+)", out.stderr)
    return f"{m.group(1)} (MAC {m.group(2)})" if m else "unknown"


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_true", help="small sizes, under 3 minutes")
    mode.add_argument("--full", action="store_true", help="real sizes, under 20 minutes")
    mode.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--only", action="append", metavar="CASE", help="run only CASE")
    parser.add_argument(
        "--results",
        type=Path,
        metavar="DIR",
        help=f"write latest.* here (default {RESULTS}; with --only {PARTIAL}; --quick {QUICK})",
    )
    args = parser.parse_args(argv)
    if args.list:
        for case in CASES:
            plan = case.plan(PROFILES["full"])
            print(f"{case.name:<12} {plan.title}{'' if case.run else '  [not written yet]'}")
        return 0
    names = [c.name for c in CASES]
    unknown = set(args.only or ()) - set(names)
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}; cases: {', '.join(names)}")
    profile = PROFILES["quick" if args.quick else "full"]
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    start_stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    bench = Bench(profile=profile, work=WORK)
    need = 2 * profile.mem_bytes + 3 * profile.big_bytes + (1 << 30)
    free = shutil.disk_usage(WORK.parent).free
    if free < need:
        print(f"only {free / GiB:.1f} GiB free under {WORK.parent}, need ~{need / GiB:.0f} GiB")
        return 2
    results: list[CaseResult] = []
    meta: dict[str, Any] = {"mode": profile.name, "started": start_stamp}
    print(f"stagebox benchmarks ({profile.name}), work dir {WORK}", flush=True)
    shutil.rmtree(WORK / "runs", ignore_errors=True)  # failed runs stay until the next start
    sshd = Sshd(WORK / "sshd")
    try:
        try:
            sshd.start()
            bench.sshd = sshd
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            bench.sshd_error = str(exc)
            print(f"sshd unavailable: {exc}", flush=True)
        meta["machine"] = machine_facts()
        meta["versions"] = versions(bench.sshd)
        for case in CASES:
            if args.only and case.name not in args.only:
                continue
            results.append(execute(case, bench))
    finally:
        bench.close()
        sshd.stop()
        meta.setdefault("machine", machine_facts())
        meta.setdefault("versions", versions(None))
        meta["versions"].update(tus_node_versions(node_dir(bench)))
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        meta["machine"]["load average 1/5/15 min, at end"] = load
        meta["profile"] = profile.__dict__
        meta["method"] = METHOD
        meta["duration_s"] = time.monotonic() - started
        meta["command"] = " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])])
        out = args.results or (PARTIAL if args.only else QUICK if args.quick else RESULTS)
        path = report.write(out, meta, results)
        print(f"wrote {path} and {path.with_suffix('.json')} in {meta['duration_s']:.0f} s")
    return 1 if any(r.status == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
