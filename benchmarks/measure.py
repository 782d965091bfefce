"""Run one client command (or several at once) and measure it, plus the server it talks to.

- wall seconds: from just before the client is spawned to its exit (``os.wait4``).
- client CPU: user+sys from ``wait4``'s rusage (the client and every descendant it reaped,
  e.g. the ``ssh`` under ``scp``).
- server CPU: delta of user+sys+children_user+children_system of the long-lived server
  process (sshd reaps its per-connection sessions, so their CPU lands in its children
  times; we wait for those sessions to end before reading it). ``also`` names more
  long-lived processes measured the same way, each on its own (the sftp cases: the
  staging sshd beside ``stagebox serve``). A server whose sessions can outlive their
  reaping parent (sshd's privilege-separation monitor may exit before it reaps the
  session child, which then goes to init with its CPU time) can instead be given a
  ``CpuGroup``: a cgroup v2 holding it and every descendant, read from ``cpu.stat``.
- peak RSS: every 50 ms psutil samples each process tree; the peak is the larger of the
  highest summed RSS of the tree and the largest kernel high-water mark (``VmHWM``, exact
  per process since its exec) seen in it. Both are lower bounds of the true tree peak; for
  a single-process client or server (stagebox) the second is exact up to the last 50 ms.
  (``wait4``'s ``ru_maxrss`` is not used: Linux carries the parent's high-water mark across
  vfork+exec, so it would report the harness's own size.)
- client I/O: the client's ``/proc/<pid>/io`` (rchar, read_bytes, syscr, ...), read once it
  has exited but before it is reaped (``waitid`` with ``WNOWAIT``), so it holds the whole
  run's totals (of the client process and its threads, not of its children).
- several clients at once (``run_measured_many``): each is measured as above on its own
  (a waiter thread each sees its exit when it happens); the server's figures span them all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

POLL_SECONDS = 0.05
MiB = 1 << 20


class CpuGroup:
    """A cgroup v2 of its own for a long-lived server: its ``usage_usec`` counts every
    descendant however it ends. ``create`` answers None where cgroup v2 is not writable."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, name: str) -> CpuGroup | None:
        try:
            with open("/proc/self/mounts") as f:
                mounts = [line.split()[1] for line in f if line.split()[2:3] == ["cgroup2"]]
        except OSError:
            return None
        for mount in mounts:
            path = Path(mount) / f"{name}-{os.getpid()}"
            try:
                path.mkdir(exist_ok=True)
                if (path / "cpu.stat").exists():
                    return cls(path)
                path.rmdir()
            except OSError:
                continue
        return None

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def pids(self) -> set[int]:
        try:
            return {int(x) for x in (self.path / "cgroup.procs").read_text().split()}
        except (OSError, ValueError):
            return set()

    def cpu_seconds(self) -> float:
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        raise OSError(f"no usage_usec in {self.path}/cpu.stat")

    def wait_for_only(self, keep: int, timeout: float) -> None:
        """Wait until ``keep`` (the listener) is the only process left in the group."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pids() - {keep}:
            time.sleep(0.02)

    def remove(self) -> None:
        with contextlib.suppress(OSError):  # still populated: left for the next start
            self.path.rmdir()


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """Summed RSS of the tree now, and the largest ``VmHWM`` of any process in it."""
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    total = hwm = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
            hwm = max(hwm, vm_hwm(p.pid))
    return total, hwm


def cpu_seconds(proc: psutil.Process) -> float:
    """User+sys of the process itself and of all children it has reaped."""
    t = proc.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


def proc_io(pid: int) -> dict[str, int]:
    """``/proc/<pid>/io`` as numbers (empty when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/io") as f:
            pairs = (line.split(":", 1) for line in f if ":" in line)
            return {k.strip(): int(v) for k, v in pairs}
    except (OSError, ValueError):
        return {}


def vm_hwm(pid: int) -> int:
    """The kernel's peak resident set size of one process, in bytes (0 when unknown)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class Poller(threading.Thread):
    """Samples the summed RSS of some process trees until stopped; keeps the peaks."""

    def __init__(self, targets: Mapping[str, psutil.Process]) -> None:
        super().__init__(daemon=True)
        self.targets = dict(targets)
        self.peaks = dict.fromkeys(self.targets, 0)
        self.samples = 0
        self._stop_event = threading.Event()

    def sample(self) -> None:
        for name, proc in self.targets.items():
            rss, hwm = tree_rss(proc)
            self.peaks[name] = max(self.peaks[name], rss, hwm)
        self.samples += 1

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(POLL_SECONDS)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@dataclass
class Measurement:
    wall_s: float
    exit_code: int
    client_cpu_s: float
    client_peak_rss: int
    server_cpu_s: float | None
    server_peak_rss: int | None
    samples: int
    also_cpu_s: dict[str, float] = field(default_factory=dict)
    also_peak_rss: dict[str, int] = field(default_factory=dict)
    client_io: dict[str, int] = field(default_factory=dict)  # /proc/<pid>/io at exit
    started: float = 0.0  # time.perf_counter() just before the client was spawned ...
    ended: float = 0.0  # ... and when it exited (run_measured_many: to tell the overlap)

    @property
    def cpu_s(self) -> float:
        return self.client_cpu_s + (self.server_cpu_s or 0.0)

    def then(self, after: Measurement) -> Measurement:
        """Two client commands run one after the other, counted as one side."""
        return Measurement(
            wall_s=self.wall_s + after.wall_s,
            exit_code=self.exit_code or after.exit_code,
            client_cpu_s=self.client_cpu_s + after.client_cpu_s,
            client_peak_rss=max(self.client_peak_rss, after.client_peak_rss),
            server_cpu_s=None,
            server_peak_rss=None,
            samples=self.samples + after.samples,
        )


def wait_for_no_children(proc: psutil.Process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not proc.children():
                return
        except psutil.Error:
            return
        time.sleep(0.02)


@dataclass(frozen=True)
class Client:
    """One client command of ``run_measured_many``, with where its output goes."""

    cmd: Sequence[str]
    stdout: Path
    stderr: Path
    env: Mapping[str, str] | None = None


@dataclass
class _Exit:
    """What ``_await_exit`` saw of one client: when it ended, its status and rusage, and
    its ``/proc/<pid>/io`` read before it was reaped."""

    ended: float = 0.0
    status: int = 0
    usage: Any = None
    io: dict[str, int] = field(default_factory=dict)


def _await_exit(pid: int, into: _Exit) -> None:
    # Exited, not yet reaped: its /proc entry still holds the run's I/O totals.
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    into.ended = time.perf_counter()
    into.io = proc_io(pid)
    _, into.status, into.usage = os.wait4(pid, 0)


def run_measured(
    cmd: Sequence[str],
    *,
    stdout: Path,
    stderr: Path,
    env: Mapping[str, str] | None = None,
    server: psutil.Process | None = None,
    drain_server_children: bool = False,
    also: Mapping[str, psutil.Process] | None = None,
    groups: Mapping[str, CpuGroup] | None = None,
    timeout: float = 1800.0,
) -> Measurement:
    """Run ``cmd`` to completion while sampling it, ``server`` and ``also``; never raises on
    exit code. ``drain_server_children`` waits for the sessions of ``server`` and ``also``.
    ``groups`` ("server" or a name in ``also``): read that one's CPU from its cgroup."""
    (m,) = run_measured_many(
        [Client(cmd, stdout, stderr, env)],
        server=server,
        drain_server_children=drain_server_children,
        also=also,
        groups=groups,
        timeout=timeout,
    )
    return m


def run_measured_many(
    clients: Sequence[Client],
    *,
    server: psutil.Process | None = None,
    drain_server_children: bool = False,
    also: Mapping[str, psutil.Process] | None = None,
    groups: Mapping[str, CpuGroup] | None = None,
    timeout: float = 1800.0,
) -> list[Measurement]:
    """``run_measured`` of clients started together (one after the other, as fast as
    ``Popen`` goes), each measured on its own (wall from its own spawn to its own exit,
    CPU, peak RSS of its tree, I/O); the server's and ``also``'s CPU and peaks span them
    all and are the same in every measurement. Each ``Measurement`` also says when its
    client started and ended (``time.perf_counter``), so callers can tell how long all
    were running at once."""
    also = dict(also or {})
    groups = dict(groups or {})
    procs = {**({"server": server} if server is not None else {}), **also}

    def cpu(name: str) -> float:
        group = groups.get(name)
        return group.cpu_seconds() if group is not None else cpu_seconds(procs[name])

    server_cpu0 = cpu("server") if server is not None else 0.0
    also_cpu0 = {name: cpu(name) for name in also}
    names = ["client"] if len(clients) == 1 else [f"client-{i}" for i in range(len(clients))]
    started: list[float] = []
    running: list[subprocess.Popen[bytes]] = []
    exits = [_Exit() for _ in clients]
    poller: Poller | None = None
    with contextlib.ExitStack() as files:

        def kill_all() -> None:
            for proc in running:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

        watchdog = threading.Timer(timeout, kill_all)
        try:
            for client in clients:
                out = files.enter_context(open(client.stdout, "wb"))
                err = files.enter_context(open(client.stderr, "wb"))
                started.append(time.perf_counter())
                running.append(
                    subprocess.Popen(
                        list(client.cmd),
                        stdout=out,
                        stderr=err,
                        env=dict(client.env or os.environ),
                        start_new_session=True,
                    )
                )
            targets = {name: psutil.Process(p.pid) for name, p in zip(names, running, strict=True)}
            if server is not None:
                targets["server"] = server
            targets.update(also)
            poller = Poller(targets)
            poller.start()
            watchdog.start()
            if len(running) == 1:
                _await_exit(running[0].pid, exits[0])
            else:  # a waiter each, so each client's end is seen when it happens
                waiters = [
                    threading.Thread(target=_await_exit, args=(p.pid, e), daemon=True)
                    for p, e in zip(running, exits, strict=True)
                ]
                for waiter in waiters:
                    waiter.start()
                for waiter in waiters:
                    waiter.join()
        except BaseException:  # interrupted: no client may outlive the harness
            kill_all()
            for proc, done in zip(running, exits, strict=False):
                if done.usage is None:
                    with contextlib.suppress(ChildProcessError):
                        os.wait4(proc.pid, 0)
                proc.returncode = -signal.SIGKILL
            if poller is not None:
                poller.stop()
            raise
        finally:
            watchdog.cancel()
    for proc, done in zip(running, exits, strict=True):
        proc.returncode = os.waitstatus_to_exitcode(done.status)
    if drain_server_children:
        for name, p in procs.items():
            wait_for_no_children(p, timeout=10.0)
            if name in groups:
                groups[name].wait_for_only(p.pid, timeout=10.0)
    assert poller is not None
    poller.sample()
    poller.stop()
    server_cpu = server_peak = None
    if server is not None:
        server_cpu = cpu("server") - server_cpu0
        server_peak = poller.peaks["server"]
    also_cpu = {name: cpu(name) - also_cpu0[name] for name in also}
    return [
        Measurement(
            wall_s=done.ended - start,
            exit_code=proc.returncode,
            client_cpu_s=done.usage.ru_utime + done.usage.ru_stime,
            client_peak_rss=poller.peaks[name],
            server_cpu_s=server_cpu,
            server_peak_rss=server_peak,
            samples=poller.samples,
            also_cpu_s=dict(also_cpu),
            also_peak_rss={name: poller.peaks[name] for name in also},
            client_io=done.io,
            started=start,
            ended=done.ended,
        )
        for name, proc, done, start in zip(names, running, exits, started, strict=True)
    ]
