"""Servers the benchmarks talk to: a fresh ``stagebox serve`` per run, one local sshd, and
for the sftp cases a staging sshd set up as the README's recipe says (``tests/sshd.py``),
or (the sftpd cases) ``stagebox serve --sftp-port``, the built-in endpoint."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from tests.sshd import RELAY_USER, StagingHost, keys_command

from benchmarks.measure import CpuGroup
from stagebox.server.process import ServerProcess, free_port, stagebox_cmd, wait_listening
from stagebox.server.process import stop_group as stop_process_group

SSHD = Path("/usr/sbin/sshd")


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the process group of ``proc`` (started with a new session), then SIGKILL."""
    if proc.poll() is not None:
        return
    try:  # descendants that left the group (sshd sessions call setsid) are ended by pid
        strays = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        strays = []
    stop_process_group(proc, timeout)
    for child in strays:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


@dataclass
class StageboxServer(ServerProcess):
    """``stagebox serve`` on a fresh data dir; started before the timed region."""

    @property
    def process(self) -> psutil.Process:
        assert self.proc is not None
        return psutil.Process(self.proc.pid)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None:
            stop_group(self.proc, timeout)
        self.proc = None


SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/ssh_host_ed25519_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
UseDNS no
PrintMotd no
Subsystem sftp internal-sftp
"""


@dataclass
class Sshd:
    """OpenSSH sshd on 127.0.0.1 with generated host and client keys, in ``root``."""

    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    user: str = field(default_factory=getpass.getuser)
    # StagingSshd: sshd's session children can outlive the monitor that should reap them
    # (their CPU then goes to init), so the listener and all it forks share a cgroup.
    cpu_group: CpuGroup | None = None

    @property
    def key(self) -> Path:
        return self.root / "client_ed25519"

    @property
    def log_path(self) -> Path:
        return self.root / "sshd.log"

    @property
    def process(self) -> psutil.Process:
        assert self.proc is not None
        return psutil.Process(self.proc.pid)

    def ssh_options(self) -> list[str]:
        return [
            "-i",
            str(self.key),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
        ]

    def ssh_command(self) -> str:
        """The ``-e`` argument for rsync."""
        return " ".join(["ssh", "-p", str(self.port), *self.ssh_options()])

    def remote(self, path: Path) -> str:
        return f"{self.user}@127.0.0.1:{path}"

    def start(self, timeout: float = 20.0) -> None:
        if not SSHD.exists():
            raise RuntimeError(f"{SSHD} not found (make system-deps installs openssh-server)")
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
        subprocess.run([*keygen, "-f", str(self.root / "ssh_host_ed25519_key")], check=True)
        subprocess.run([*keygen, "-f", str(self.key)], check=True)
        shutil.copy(self.key.with_suffix(".pub"), self.root / "authorized_keys")
        config = self.root / "sshd_config"
        config.write_text(SSHD_CONFIG.format(port=self.port, dir=self.root))
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        subprocess.run([str(SSHD), "-t", "-f", str(config)], check=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_for_login(timeout)

    def wait_for_login(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        probe = ["ssh", "-p", str(self.port), *self.ssh_options(), f"{self.user}@127.0.0.1"]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited early:\n{self.log_path.read_text()}")
            ok = subprocess.run([*probe, "true"], capture_output=True, timeout=10)
            if ok.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"cannot ssh to the benchmark sshd:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
        self.proc = None


@dataclass
class StagingSshd(Sshd):
    """The sftp cases' sshd: ``tests/sshd.py``'s staging host for an sshd box (the
    staging account's keys come from stagebox's AuthorizedKeysCommand ``command``, each
    forcing the relay to the server's session socket), and root logs in with a
    generated key, so the peers (scp, sftp, rsync, rclone) and stagebox talk to the
    same sshd."""

    command: Path | None = None
    user: str = "root"
    host: StagingHost | None = None

    @property
    def log_path(self) -> Path:
        return self.root / "host" / "sshd.log"

    def start(self, timeout: float = 20.0) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
        subprocess.run([*keygen, "-f", str(self.key)], check=True)
        shutil.copy(self.key.with_suffix(".pub"), self.root / "authorized_keys")
        self.host = StagingHost(
            self.root / "host",
            command=self.command,
            port=self.port,
            root_keys_file=self.root / "authorized_keys",
            user=RELAY_USER,
            force_command=None,
        )
        self.cpu_group = CpuGroup.create("stagebox-bench-sshd")
        self.host.start(timeout)
        self.proc = self.host.proc
        if self.cpu_group is not None and self.proc is not None:
            self.cpu_group.add(self.proc.pid)  # before the first connection is forked
        self.wait_for_login(timeout)

    def stop(self) -> None:
        super().stop()
        if self.host is not None:
            self.host.proc = None
        if self.cpu_group is not None:
            self.cpu_group.remove()


BOX = "sftp-staging"
UPLOADER = "bench"
KEYS_COMMANDS = Path("/run/stagebox-bench")  # sshd runs no AuthorizedKeysCommand from /tmp


@dataclass(frozen=True)
class Installation:
    """One approved uploader's client side: its token and config dir (its ssh key, its
    known_hosts and what the approval told it)."""

    name: str
    token: str
    config: Path

    def env(self, state: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEBOX_")}
        env.update(
            STAGEBOX_CONFIG_DIR=str(self.config),
            STAGEBOX_STATE_DIR=str(state),
            STAGEBOX_TOKEN=self.token,
        )
        return env


@dataclass
class ApprovedStage:
    """A stagebox data dir under ``root`` in which ``uploaders`` uploaders (``bench``,
    ``bench-2``, ...) are registered and approved on an sftp staging box, for the sftp
    cases; what serves the box over SFTP is the subclass's (an OpenSSH staging sshd, or
    stagebox's built-in endpoint).

    ``start`` does the admin recipe once (untimed): box, uploaders, ``stagebox register``
    of each, approvals, then a snapshot of the data dir. ``fresh_server`` restores the data
    dir from the snapshot, empties the uploaders' staging directories and starts
    ``stagebox serve``, so each run starts with nothing stored and nothing staged; ``reset``
    does the same without the server, to free what a run stored. The data dir keeps one
    path (sshd's AuthorizedKeysCommand names it).
    """

    root: Path
    uploaders: int = 1
    installs: list[Installation] = field(default_factory=list)
    # what `stagebox_sftp_upload` records the stage's logins under
    logins_field: str = field(default="logins", init=False)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def approved(self) -> Path:
        return self.root / "data-approved"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def token(self) -> str:
        return self.installs[0].token

    def client_env(self, state: Path, who: int = 0) -> dict[str, str]:
        """The environment of uploader ``who``'s client, with its journal in ``state``."""
        return self.installs[who].env(state)

    def _run(self, argv: list[str], env: dict[str, str] | None = None) -> str:
        out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {out.returncode}\n{out.stderr[-3000:]}")
        return out.stdout

    def admin(self, *args: str) -> str:
        return self._run(stagebox_cmd("admin", "--data-dir", str(self.data), *args))

    def _server(self) -> StageboxServer:
        """A (not yet started) ``stagebox serve`` on the data dir."""
        return StageboxServer(self.data)

    def _make_root(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)

    def _init(self) -> None:
        """The data dir, made as a facility makes it before anything else."""
        self.admin("init")

    def _add_uploaders(self) -> None:
        for i in range(self.uploaders):
            name = UPLOADER if i == 0 else f"{UPLOADER}-{i + 1}"
            token = self.admin("uploader", "add", name).strip()
            self.installs.append(Installation(name, token, self.root / "clients" / name))

    def _approve(self) -> None:
        """Every uploader registers (a key of its own) and is approved on the box, on a
        server started for it; then the data dir is snapshot."""
        server = self._server()
        server.start()
        try:
            register = stagebox_cmd("register", "--server", server.url)
            with ThreadPoolExecutor(len(self.installs)) as pool:  # each a Python start-up
                envs = [i.env(self.root / "setup-state" / i.name) for i in self.installs]
                list(pool.map(lambda env: self._run(register, env), envs))
            requests = json.loads(self.admin("requests", "list", "--json"))
            for install in self.installs:
                rid = next(r["id"] for r in requests if r["uploader"] == install.name)
                self.admin("requests", "approve", str(rid), "--box", BOX)
        finally:
            server.stop()
        shutil.copytree(self.data, self.approved, symlinks=True)

    def reset(self) -> None:
        """The data dir as it was right after the approvals, the staging dirs emptied."""
        shutil.rmtree(self.data)
        shutil.copytree(self.approved, self.data, symlinks=True)
        for entry in self.staging.iterdir():  # the uploaders' own directories stay
            if entry.is_dir() and not entry.is_symlink():
                for child in entry.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            else:
                entry.unlink()

    def fresh_server(self) -> StageboxServer:
        """``stagebox serve`` on the data dir as it was right after the approvals."""
        self.reset()
        server = self._server()
        server.start()
        return server

    def measured(self) -> tuple[dict[str, psutil.Process], dict[str, CpuGroup]]:
        """Servers measured beside ``stagebox serve`` (``run_measured``'s ``also``), and
        those whose CPU comes from a cgroup (its ``groups``)."""
        return {}, {}

    def logins(self, server: StageboxServer) -> int:
        """Logins to the SFTP side so far."""
        return 0

    def stop(self) -> None:
        """Free the disk (the logs stay beside)."""
        for heavy in (self.data, self.approved, self.staging):
            shutil.rmtree(heavy, ignore_errors=True)


@dataclass
class SftpStage(ApprovedStage):
    """An sshd box: a staging sshd whose staging account takes its keys from stagebox's
    AuthorizedKeysCommand (each forcing the relay), every ``stagebox serve`` of the
    stage with ``--sftp-sessions`` serving what the relays hand over; after the approval
    one small upload with ``--accept-new-host-key`` (the first contact records the host
    key in the client's known_hosts; the timed runs pass no flag). Everything lives
    under ``root``, which the staging account must be able to traverse (to reach the
    socket).
    """

    sshd: StagingSshd = field(init=False)
    logins_field: str = field(default="sshd_logins", init=False)

    @property
    def keys_home(self) -> Path:
        return KEYS_COMMANDS / f"{self.root.name}-{os.getpid()}"

    @property
    def socket(self) -> Path:
        return self.root / "run" / "sftp.sock"

    def _server(self) -> StageboxServer:
        return StageboxServer(self.data, extra_args=["--sftp-sessions"])

    def start(self) -> None:
        self._make_root()
        for parent in [self.root, *self.root.parents]:
            if parent.stat().st_mode & 0o001 == 0:
                raise RuntimeError(f"{parent} is not traversable by the staging account")
        self.staging.mkdir()
        KEYS_COMMANDS.mkdir(mode=0o755, exist_ok=True)
        shutil.rmtree(self.keys_home, ignore_errors=True)
        command = keys_command(self.data, self.keys_home)
        self.sshd = StagingSshd(self.root / "sshd", command=command)
        self.sshd.start()
        self._init()
        self._add_uploaders()
        self.admin(
            "box", "add", BOX, "--role", "staging", "--path", str(self.staging),
            "--sftp-host", "127.0.0.1", "--sftp-port", str(self.sshd.port),
            "--sftp-user", RELAY_USER, "--sftp-endpoint", "sshd",
            "--sftp-socket", str(self.socket),
        )  # fmt: skip
        self._approve()
        first = self.root / "first-contact"
        first.mkdir()
        (first / "hello.txt").write_text("first contact\n")
        server = self.fresh_server()
        try:
            for install in self.installs:
                upload = stagebox_cmd(
                    "upload", str(first), "--server", server.url, "--dataset", "first-contact",
                    "--method", "sftp", "--accept-new-host-key", "--json",
                )  # fmt: skip
                env = install.env(self.root / "setup-state" / install.name)
                report = json.loads(self._run(upload, env))
                if report["totals"].get("verified") != 1:
                    raise RuntimeError(f"the first-contact upload did not verify: {report}")
        finally:
            server.stop()

    def measured(self) -> tuple[dict[str, psutil.Process], dict[str, CpuGroup]]:
        groups = {"sshd": self.sshd.cpu_group} if self.sshd.cpu_group else {}
        return {"sshd": self.sshd.process}, groups

    def logins(self, server: StageboxServer) -> int:
        return self.sshd_logins()

    def sshd_logins(self) -> int:
        """Logins of the staging account so far (sshd logs each accepted key)."""
        try:
            text = self.sshd.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return text.count(f"Accepted publickey for {RELAY_USER} ")

    def stop(self) -> None:
        """Stop sshd, drop the wrapper, and free the disk (the logs stay beside)."""
        with contextlib.suppress(AttributeError):
            self.sshd.stop()
        shutil.rmtree(self.keys_home, ignore_errors=True)
        super().stop()
        with contextlib.suppress(OSError):
            KEYS_COMMANDS.rmdir()  # only when no other run's command is left in it


SFTPD_USER = "stagebox"  # the login name the built-in endpoint answers to


@dataclass
class SftpdStage(ApprovedStage):
    """stagebox's built-in SFTP endpoint: every ``stagebox serve`` of the stage runs with
    ``--sftp-port`` (one port for the stage: the box records it, and the approval told the
    clients), so the endpoint is the server's own thread. The box is added with
    ``--sftp-endpoint stagebox``; the uploaders register and are approved while a server
    with the endpoint runs, so the approval carries the endpoint's host key fingerprint
    (kept in the data dir, restored with it) and the clients check their first contact
    with no ``--accept-new-host-key``. No Unix account, no root needed.
    """

    sftp_port: int = field(default_factory=free_port)
    logins_field: str = field(default="endpoint_logins", init=False)
    where: str = field(default="", init=False)  # for the cases' notes: tmpfs or disk, why

    def _server(self) -> StageboxServer:
        return SftpdServer(self.data, self.sftp_port)

    def start(self) -> None:
        self._make_root()
        self.staging.mkdir()
        self._init()
        self._add_uploaders()
        self.admin(
            "box", "add", BOX, "--role", "staging", "--path", str(self.staging),
            "--sftp-host", "127.0.0.1", "--sftp-port", str(self.sftp_port),
            "--sftp-user", SFTPD_USER, "--sftp-endpoint", "stagebox",
        )  # fmt: skip
        self._approve()
        if not self.host_key():
            raise RuntimeError(f"box {BOX}: no host key fingerprint recorded for the approval")

    def host_key(self) -> str:
        """The endpoint's fingerprint as the box records it (what approvals carry)."""
        conn = sqlite3.connect(self.data / "catalog.db")
        try:
            row = conn.execute("SELECT attributes FROM storage_boxes WHERE name = ?", (BOX,))
            attributes = json.loads(row.fetchone()[0])
        finally:
            conn.close()
        return str(attributes.get("sftp_host_key", ""))

    def logins(self, server: StageboxServer) -> int:
        """Logins the endpoint logged in this server's log (one log per server)."""
        try:
            text = server.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return text.count(": logged in from ")


class SftpdServer(StageboxServer):
    """``stagebox serve --sftp-port PORT``; started once its endpoint greets with SSH too."""

    def __init__(self, data_dir: Path, sftp_port: int) -> None:
        super().__init__(data_dir, extra_args=["--sftp-port", str(sftp_port)])
        self.sftp_port = sftp_port

    def start(self, timeout: float = 30.0) -> None:
        super().start(timeout)
        assert self.proc is not None
        try:
            wait_listening(self.sftp_port, self.proc, self.log_path, timeout, banner=b"SSH-")
        except BaseException:
            self.stop()
            raise
