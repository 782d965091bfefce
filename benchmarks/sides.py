"""One measured run of one side: stagebox upload (http or sftp), scp, sftp put, rsync,
rclone, cp+sha256sum.

Every run starts from fresh state and is checked after the clock stops: a stagebox run gets
its own server data dir, server process and client journal (``STAGEBOX_STATE_DIR``), and
its ``--json`` totals must say every file was verified; an scp/rsync run gets an empty
destination whose contents are counted afterwards. Dirty pages are flushed (``sync``)
before the clock starts so one run's write-back does not land in the next one's time.

A run's data dir is a copy of a template made once per ``ServerSetup`` (uploader ``bench``
and the setup's boxes, nothing uploaded): each ``stagebox admin`` command is a Python
start-up of its own, which would otherwise cost more than a quick run's upload.

A stagebox sftp run gets a fresh server process on the case's data dir restored to the
state right after the uploader's approval (``ApprovedStage.fresh_server``), an emptied
staging directory and its own client journal; the registration, the approval and (OpenSSH
staging host) the first contact (``--accept-new-host-key``) happened once for the case,
untimed. The sftpd cases do the same with stagebox's built-in endpoint (``SftpdStage``),
and can put destinations on tmpfs (``Bench.scratch``), the peers' too (``dest_root``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.measure import Client, Measurement, run_measured, run_measured_many
from benchmarks.servers import ApprovedStage, SftpdStage, SftpStage, Sshd, StageboxServer
from benchmarks.workloads import GiB, MiB, count_files
from stagebox.server.process import stagebox_cmd

Record = dict[str, Any]


class RunFailed(RuntimeError):
    """A run did not do what it was asked; the case stops and the report says why."""


@dataclass(frozen=True)
class Profile:
    name: str
    big_bytes: int
    small_files: int
    small_folders: int
    small_bytes: int
    mem_bytes: int
    warmups: int
    runs: int
    mem_warmups: int
    mem_runs: int
    sftp_mem_runs: int
    all_peers: bool = True  # False: a case runs only the peer its target names
    audit_objects: int = 64  # the audit case's store: this many stored objects ...
    audit_object_bytes: int = 64 * MiB  # ... of this size each
    audit_runs: int = 7  # counted rounds: its 0.90x target is within this machine's noise
    sftpd_mem_runs: int = 2  # sftpd-memory: each run is 5 uploads of mem_bytes at once


@dataclass(frozen=True)
class ServerSetup:
    """What a run's fresh ``stagebox serve`` needs beyond the defaults.

    ``name`` keys the template data dir, ``admin`` are ``stagebox admin`` arguments run on
    the template once (an S3 staging box), ``env`` are server settings, and ``also`` are
    more servers measured beside it (the moto S3 server the staging box lives in).
    """

    name: str = "default"
    admin: tuple[tuple[str, ...], ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    also: Mapping[str, psutil.Process] = field(default_factory=dict)


DEFAULT_SERVER = ServerSetup()
UPLOADER = "bench"


@dataclass
class Bench:
    """What every case needs: the profile, the work dir, the shared sshd, and what cases
    share once one has set it up (the sftp cases' staging host, stagebox data dir
    templates), with what ``close`` must stop at the end."""

    profile: Profile
    work: Path
    sshd: Sshd | None = None
    sshd_error: str | None = None
    sftp: SftpStage | None = None
    sftp_error: str | None = None
    sftpd: SftpdStage | None = None  # the sftpd cases' built-in endpoint, on tmpfs
    sftpd_error: str | None = None
    templates: dict[str, tuple[Path, str]] = field(default_factory=dict)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        """Stop what the cases left running for each other, last started first."""
        while self.closers:
            self.closers.pop()()

    @property
    def workloads(self) -> Path:
        return self.work / "workloads"

    def fresh_dir(self, label: str) -> Path:
        """An empty dir under runs/ named after ``label`` (spaces and slashes replaced: a
        box path may hold neither)."""
        path = self.work / "runs" / re.sub(r"[^\w.@+-]+", "_", label)
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def need_sshd(self) -> Sshd:
        if self.sshd is None:
            raise RunFailed(f"no sshd: {self.sshd_error}")
        return self.sshd

    def scratch(self, name: str, need: int) -> tuple[Path, str | None]:
        """A fresh directory ``name`` on tmpfs (``/dev/shm``), so the disk does not decide,
        when it has room for ``need`` bytes and the RAM to back them; else under the work
        dir. Returns it, and when not on tmpfs why (for the case's notes). The harness's
        tmpfs directory goes when it ends (``close``)."""
        reason = tmpfs_reason(need)
        if reason is not None:
            return self.fresh_dir(name), reason
        root = TMPFS / f"stagebox-bench-{os.getpid()}"
        if not root.exists():
            root.mkdir(mode=0o755)
            self.closers.insert(0, lambda: shutil.rmtree(root, ignore_errors=True))
        path = root / re.sub(r"[^\w.@+-]+", "_", name)
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        return path, None


TMPFS = Path("/dev/shm")
TMPFS_RAM_SPARE = 2 * GiB  # RAM left beside what the case puts in tmpfs


def tmpfs_reason(need: int) -> str | None:
    """Why ``need`` bytes should not go into tmpfs here (None: they may)."""
    mounts = {p.mountpoint: p.fstype for p in psutil.disk_partitions(all=True)}
    if mounts.get(str(TMPFS)) != "tmpfs":
        return f"{TMPFS} is not a tmpfs here"
    free = shutil.disk_usage(TMPFS).free
    if free < need + 256 * MiB:
        return f"{TMPFS} has {_gib(free)} free, the case needs {_gib(need)}"
    available = psutil.virtual_memory().available
    if available < need + TMPFS_RAM_SPARE:
        return (
            f"{_gib(need)} in tmpfs would leave under {_gib(TMPFS_RAM_SPARE)}"
            f" of the {_gib(available)} of RAM available"
        )
    return None


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


HELP_GROUPS = (("upload",), ("admin",), ("serve",), ())


@cache
def stagebox_help(group: tuple[str, ...]) -> str:
    """The help of one stagebox command group, to probe for features."""
    out = subprocess.run(stagebox_cmd(*group, "--help"), capture_output=True, text=True)
    return out.stdout


def in_stagebox_help(word: str) -> bool:
    """Whether any command group's help names ``word``; groups are asked one at a time
    (each is a Python start-up), the likeliest first."""
    return any(word.lower() in stagebox_help(group).lower() for group in HELP_GROUPS)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def record(m: Measurement, **extra: Any) -> Record:
    return {
        "wall_s": m.wall_s,
        "client_cpu_s": m.client_cpu_s,
        "server_cpu_s": m.server_cpu_s,
        "cpu_s": m.cpu_s,
        "client_peak_rss": m.client_peak_rss,
        "server_peak_rss": m.server_peak_rss,
        "exit_code": m.exit_code,
        "rss_samples": m.samples,
        **extra,
    }


def _check_report(
    what: str, m: Measurement, out: Path, err: Path, server_log: Path, files: int
) -> dict[str, Any]:
    """The ``--json`` totals of an upload; every file must be verified."""
    try:
        totals = json.loads(out.read_text())["totals"]
    except (OSError, ValueError, KeyError) as exc:
        raise RunFailed(
            f"{what} exit {m.exit_code}, no JSON report ({exc}):\n"
            f"{_tail(err)}\n-- server log --\n{_tail(server_log)}"
        ) from exc
    expected = {"files": files, "verified": files, "skipped": 0, "failed": 0}
    got = {k: totals.get(k) for k in expected}
    if m.exit_code != 0 or got != expected:
        failures = [
            f"{f.get('path')}: {f.get('error')}"
            for f in json.loads(out.read_text())["files"]
            if f.get("state") == "failed"
        ][:5]
        raise RunFailed(
            f"{what} exit {m.exit_code}, totals {totals}, expected {expected}"
            f"\nfirst failures: {failures}\n{_tail(err)}\n-- server log --\n"
            f"{_tail(server_log)}"
        )
    return dict(totals)


def server_template(b: Bench, setup: ServerSetup) -> tuple[Path, str]:
    """The data dir runs of ``setup`` copy, and the uploader's token; made on first use."""
    if setup.name in b.templates:
        return b.templates[setup.name]
    root = b.work / "runs" / "_templates" / setup.name
    shutil.rmtree(root, ignore_errors=True)
    template = StageboxServer(root / "data")
    try:
        for args in setup.admin:
            template.admin(*args)
        token = template.add_uploader(UPLOADER)
    except subprocess.CalledProcessError as exc:
        raise RunFailed(f"stagebox admin {' '.join(exc.cmd[6:])}: {exc.stderr}") from exc
    b.templates[setup.name] = (template.data_dir, token)
    return template.data_dir, token


@contextmanager
def fresh_server(
    b: Bench, run_dir: Path, setup: ServerSetup = DEFAULT_SERVER
) -> Iterator[tuple[StageboxServer, str]]:
    """``stagebox serve`` on a copy of the setup's template in ``run_dir``, started, and
    the uploader's token; stopped on leaving."""
    data, token = server_template(b, setup)
    server = StageboxServer(run_dir / "server-data", env=dict(setup.env))
    shutil.copytree(data, server.data_dir)
    server.start()
    try:
        yield server, token
    finally:
        server.stop()


def wait_stored(
    server: StageboxServer, token: str, dataset: str, timeout: float = 300.0
) -> list[Any]:
    """The dataset's datafiles once none is waiting any more (stored or failed)."""
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + timeout
    items: list[Any] = []
    while time.monotonic() < deadline:
        resp = httpx.get(
            f"{server.url}/api/v1/datafiles", params={"dataset": dataset}, headers=headers
        )
        resp.raise_for_status()
        items = resp.json()["items"]
        if items and all(i["state"] in ("stored", "failed") for i in items):
            return items
        time.sleep(0.1)
    raise RunFailed(f"{dataset}: not stored within {timeout:.0f} s: {items}")


def with_also(m: Measurement, rec: Record) -> Record:
    """Each ``also`` server's CPU and peak RSS as ``<name>_cpu_s`` and ``<name>_peak_rss``,
    beside (not in) the stagebox server's."""
    for name in m.also_cpu_s:
        rec[f"{name}_cpu_s"] = m.also_cpu_s[name]
        rec[f"{name}_peak_rss"] = m.also_peak_rss[name]
    return rec


def stagebox_upload(
    b: Bench,
    src: Path,
    files: int,
    nbytes: int,
    label: str,
    setup: ServerSetup = DEFAULT_SERVER,
    settle: bool = False,
) -> Record:
    """``stagebox upload SRC --dataset`` to a fresh server; every file must be verified.

    ``settle``: before the server stops, wait (untimed) until every file is stored, so
    its staging box is left as empty as stagebox leaves it (an S3 box on moto).
    """
    run_dir = b.fresh_dir(label)
    state = run_dir / "client-state"
    state.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "STAGEBOX_TOKEN"}
    env["STAGEBOX_STATE_DIR"] = str(state)
    dataset = f"bench-{run_dir.name}"
    out, err = run_dir / "client.json", run_dir / "client.err"
    with fresh_server(b, run_dir, setup) as (server, token):
        cmd = stagebox_cmd(
            "upload", str(src), "--server", server.url, "--token", token,
            "--dataset", dataset, "--json",
        )  # fmt: skip
        os.sync()
        m = run_measured(
            cmd, stdout=out, stderr=err, env=env, server=server.process, also=setup.also
        )
        totals = _check_report(f"stagebox upload ({label})", m, out, err, server.log_path, files)
        if settle:
            stored = wait_stored(server, token, dataset)
            if any(i["state"] != "stored" for i in stored):
                raise RunFailed(f"stagebox upload ({label}): not all stored: {stored}")
    shutil.rmtree(run_dir)
    return with_also(
        m,
        record(
            m,
            files=files,
            bytes=nbytes,
            bytes_sent=totals.get("bytes_sent"),
            client_reported_s=totals.get("seconds"),
        ),
    )


def _to_sshd(
    b: Bench,
    label: str,
    command: Callable[[Sshd, Path], list[str]],
    sshd: Sshd | None = None,
    dest_root: Path | None = None,
) -> tuple[Measurement, Path, Path, Path]:
    """Run an ssh peer tool into an empty folder on ``sshd`` (default: the local sshd),
    measured; the folder is ``dest`` in a directory of the run's own under ``dest_root``
    (a tmpfs one, say), by default in the run dir.

    Returns the measurement, the destination, the run dir and the stderr file.
    """
    sshd = sshd or b.need_sshd()
    run_dir = b.fresh_dir(label)
    dest = (run_dir if dest_root is None else dest_root / run_dir.name) / "dest"
    if dest_root is not None:
        shutil.rmtree(dest.parent, ignore_errors=True)
    dest.mkdir(parents=True)
    os.sync()
    err = run_dir / "client.err"
    m = run_measured(
        command(sshd, dest),
        stdout=run_dir / "client.out",
        stderr=err,
        server=sshd.process,
        drain_server_children=True,
        groups={"server": sshd.cpu_group} if sshd.cpu_group else None,
    )
    return m, dest, run_dir, err


def _peer(
    b: Bench,
    tool: str,
    label: str,
    command: Callable[[Sshd, Path], list[str]],
    sshd: Sshd | None,
    files: int,
    nbytes: int,
    dest_root: Path | None = None,
) -> Record:
    """Run a peer tool into an empty folder on ``sshd`` (under ``dest_root``, if given);
    it must leave exactly ``files`` files of ``nbytes`` bytes in all there."""
    m, dest, run_dir, err = _to_sshd(b, label, command, sshd, dest_root)
    got = count_files(dest)
    if dest_root is not None:
        shutil.rmtree(dest.parent)  # tmpfs: free its memory before the next run
    if m.exit_code != 0 or got != (files, nbytes):
        raise RunFailed(
            f"{tool} ({label}) exit {m.exit_code}, got (files, bytes) {got}, "
            f"expected {(files, nbytes)}:\n{_tail(err)}"
        )
    shutil.rmtree(run_dir)
    return record(m, files=files, bytes=nbytes)


def scp_copy(b: Bench, path: Path, label: str, sshd: Sshd | None = None) -> Record:
    """``scp`` one file into an empty folder on ``sshd`` (default: the local sshd)."""
    return _peer(
        b,
        "scp",
        label,
        lambda sshd, dest: [
            "scp", "-q", "-P", str(sshd.port), *sshd.ssh_options(), str(path), sshd.remote(dest)
        ],
        sshd,
        1,
        path.stat().st_size,
    )  # fmt: skip


def rsync_tree(
    b: Bench,
    src: Path,
    files: int,
    nbytes: int,
    label: str,
    sshd: Sshd | None = None,
    dest_root: Path | None = None,
) -> Record:
    """``rsync -a -e ssh`` of a tree into an empty folder on ``sshd`` (default: the local
    sshd), under ``dest_root`` if given."""
    return _peer(
        b,
        "rsync",
        label,
        lambda sshd, dest: [
            "rsync", "-a", "-e", sshd.ssh_command(), f"{src}/", sshd.remote(dest) + "/"
        ],
        sshd,
        files,
        nbytes,
        dest_root,
    )  # fmt: skip


# -- sftp cases: stagebox over sftp and its peers, all against the staging sshd -----------
# (sftpd cases: stagebox to its built-in endpoint; the peers into the local sshd)


def _sftp_upload_cmd(server: StageboxServer, src: Path, dataset: str) -> list[str]:
    return stagebox_cmd(
        "upload", str(src), "--server", server.url, "--dataset", dataset,
        "--method", "sftp", "--json",
    )  # fmt: skip


def _server_parts(stage: ApprovedStage, m: Measurement) -> Record:
    """The server figures of a stagebox sftp run: ``stagebox serve`` plus what serves
    the SFTP side beside it (the staging sshd; nothing for the built-in endpoint, which is
    serve's own thread); when there is such a part, ``serve_*`` and ``<name>_*`` hold
    each part."""
    serve_cpu, serve_rss = m.server_cpu_s or 0.0, m.server_peak_rss or 0
    parts: Record = {"serve_cpu_s": serve_cpu, "serve_peak_rss": serve_rss} if m.also_cpu_s else {}
    for name in m.also_cpu_s:
        parts[f"{name}_cpu_s"] = m.also_cpu_s[name]
        parts[f"{name}_peak_rss"] = m.also_peak_rss[name]
    server_cpu = serve_cpu + sum(m.also_cpu_s.values())
    return {
        "server_cpu_s": server_cpu,
        "server_peak_rss": serve_rss + sum(m.also_peak_rss.values()),
        **parts,
    }


@dataclass
class _SftpRun:
    """What ``_stagebox_sftp_run`` measured and checked: each client's measurement and
    ``--json`` totals, and the stage's figures for the run."""

    ms: list[Measurement]
    totals: list[dict[str, Any]]
    parts: Record  # _server_parts
    logins: int
    staged_files_left: int


def _stagebox_sftp_run(
    b: Bench, stage: ApprovedStage, srcs: list[Path], files: int, label: str
) -> _SftpRun:
    """``stagebox upload SRC --method sftp`` of each source, all started together (one:
    ``run_measured``'s case), client ``i`` as the stage's uploader ``i`` (its own key,
    token and journal) into a dataset of its own, to a fresh server; each must report
    its ``files`` files verified. Then the stage is reset: what the run stored goes now
    (tmpfs: its memory), not at the next run."""
    if len(srcs) > len(stage.installs):
        raise RunFailed(f"{len(srcs)} uploads at once need as many uploaders on the stage")
    run_dir = b.fresh_dir(label)
    server = stage.fresh_server()
    logins0 = stage.logins(server)
    also, groups = stage.measured()
    clients = []
    try:
        for i, src in enumerate(srcs):
            state = run_dir / f"client-{i}-state"
            state.mkdir()
            dataset = f"bench-{label}" if len(srcs) == 1 else f"bench-{label}-{i}"
            clients.append(
                Client(
                    _sftp_upload_cmd(server, src, dataset),
                    stdout=run_dir / f"client-{i}.json",
                    stderr=run_dir / f"client-{i}.err",
                    env=stage.client_env(state, who=i),
                )
            )
        os.sync()
        ms = run_measured_many(
            clients, server=server.process, also=also, drain_server_children=True, groups=groups
        )
    finally:
        server.stop()
    totals = []
    for i, (client, m) in enumerate(zip(clients, ms, strict=True)):
        what = f"stagebox upload --method sftp ({label}{f', client {i}' if i else ''})"
        totals.append(_check_report(what, m, client.stdout, client.stderr, server.log_path, files))
    left, _ = count_files(stage.staging)
    logins = stage.logins(server) - logins0
    stage.reset()
    shutil.rmtree(run_dir)
    return _SftpRun(ms, totals, _server_parts(stage, ms[0]), logins, left)


def stagebox_sftp_upload(
    b: Bench, stage: ApprovedStage, src: Path, files: int, nbytes: int, label: str
) -> Record:
    """``stagebox upload SRC --dataset --method sftp``; every file must be verified.

    Server CPU is ``stagebox serve`` plus, for the OpenSSH staging host, the staging sshd
    (its sftp sessions and the AuthorizedKeysCommand it runs at each login), server peak
    RSS the sum of their peaks; ``serve_*`` and ``sshd_*`` hold each part. For the
    built-in endpoint the server is ``stagebox serve`` alone.
    """
    run = _stagebox_sftp_run(b, stage, [src], files, label)
    (m,), (totals,) = run.ms, run.totals
    return record(
        m,
        files=files,
        bytes=nbytes,
        bytes_sent=totals.get("bytes_sent"),
        client_reported_s=totals.get("seconds"),
        cpu_s=m.client_cpu_s + run.parts["server_cpu_s"],
        **run.parts,
        **{stage.logins_field: run.logins},
        staged_files_left=run.staged_files_left,
    )


def stagebox_sftp_uploads_at_once(
    b: Bench, stage: ApprovedStage, srcs: list[Path], nbytes: int, label: str
) -> Record:
    """One ``stagebox upload SRC --method sftp`` of one file per source, all started
    together, each by its own uploader of ``stage``. The record's client figures are the
    worst client's (peak RSS) or the sum (CPU), with each client's in ``*_each``; wall
    time runs from the first spawn to the last exit; ``all_running_s`` is how long all of
    them were running at once (it must be > 0)."""
    run = _stagebox_sftp_run(b, stage, srcs, 1, label)
    ms = run.ms
    all_running = min(m.ended for m in ms) - max(m.started for m in ms)
    if all_running <= 0:
        raise RunFailed(f"{label}: the {len(ms)} clients were never all running at once")
    client_cpu = sum(m.client_cpu_s for m in ms)
    return {
        **record(ms[0]),
        "wall_s": max(m.ended for m in ms) - min(m.started for m in ms),
        "exit_code": max((m.exit_code for m in ms), key=abs),
        "client_cpu_s": client_cpu,
        "cpu_s": client_cpu + run.parts["server_cpu_s"],
        "client_peak_rss": max(m.client_peak_rss for m in ms),
        "clients": len(ms),
        "client_peak_rss_each": [m.client_peak_rss for m in ms],
        "client_wall_s_each": [m.wall_s for m in ms],
        "client_cpu_s_each": [m.client_cpu_s for m in ms],
        "all_running_s": all_running,
        "files": len(ms),
        "bytes": nbytes * len(ms),
        **run.parts,
        stage.logins_field: run.logins,
        "staged_files_left": run.staged_files_left,
    }


def on_staging_sshd(rec: Record) -> Record:
    """A peer's server is the staging sshd: say so in the ``sshd_*`` fields too."""
    return {**rec, "sshd_cpu_s": rec["server_cpu_s"], "sshd_peak_rss": rec["server_peak_rss"]}


def sftp_put(
    b: Bench,
    path: Path,
    label: str,
    sshd: Sshd,
    cipher: str | None = None,
    dest_root: Path | None = None,
) -> Record:
    """OpenSSH ``sftp`` batch ``put`` of one file into an empty folder on ``sshd`` (under
    ``dest_root`` if given), with ``-c cipher`` if given, else OpenSSH's default."""

    def command(sshd: Sshd, dest: Path) -> list[str]:
        batch = dest.parent / "batch"
        batch.write_text(f'put "{path}" "{dest / path.name}"\n')
        return [
            "sftp", "-q", *(["-c", cipher] if cipher else []), "-b", str(batch),
            "-P", str(sshd.port), *sshd.ssh_options(), f"{sshd.user}@127.0.0.1",
        ]  # fmt: skip

    return _peer(b, "sftp put", label, command, sshd, 1, path.stat().st_size, dest_root)


def scp_tree(b: Bench, src: Path, files: int, nbytes: int, label: str, sshd: Sshd) -> Record:
    """``scp -r`` of a tree into an empty folder on ``sshd``."""
    return _peer(
        b,
        "scp -r",
        label,
        lambda sshd, dest: [
            "scp", "-q", "-r", "-P", str(sshd.port), *sshd.ssh_options(), str(src),
            sshd.remote(dest),
        ],
        sshd,
        files,
        nbytes,
    )  # fmt: skip


def rclone_copy(b: Bench, src: Path, files: int, nbytes: int, label: str, sshd: Sshd) -> Record:
    """``rclone copy SRC :sftp:DEST`` (an on-the-fly sftp remote, rclone's defaults: it
    checks each upload's md5 by running ``md5sum`` over ssh) into an empty folder."""

    def command(sshd: Sshd, dest: Path) -> list[str]:
        config = dest.parent / "rclone.conf"
        config.touch()
        return [
            "rclone", "copy", "--config", str(config), "--sftp-host", "127.0.0.1",
            "--sftp-port", str(sshd.port), "--sftp-user", sshd.user,
            "--sftp-key-file", str(sshd.key), f"{src}/", f":sftp:{dest}/",
        ]  # fmt: skip

    return _peer(b, "rclone copy", label, command, sshd, files, nbytes)


def cp_then_sha256(b: Bench, path: Path, label: str) -> Record:
    """The local limit: ``cp`` the file, then ``sha256sum`` the copy (two timed commands)."""
    run_dir = b.fresh_dir(label)
    copy = run_dir / path.name
    os.sync()
    cp = run_measured(
        ["cp", str(path), str(copy)], stdout=run_dir / "cp.out", stderr=run_dir / "cp.err"
    )
    sha = run_measured(
        ["sha256sum", str(copy)], stdout=run_dir / "sha.out", stderr=run_dir / "sha.err"
    )
    if cp.exit_code != 0 or sha.exit_code != 0:
        raise RunFailed(f"cp/sha256sum ({label}) exit {cp.exit_code}/{sha.exit_code}")
    digest = (run_dir / "sha.out").read_text().split()[0]
    shutil.rmtree(run_dir)
    both = cp.then(sha)
    size = path.stat().st_size
    return record(both, files=1, bytes=size, cp_s=cp.wall_s, sha256_s=sha.wall_s, sha256=digest)
