"""Servers the benchmarks talk to: a fresh ``stagebox serve`` per run, one local sshd, and
for the sftp cases a staging sshd set up as the README's recipe says (``tests/sshd.py``)."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from tests.sshd import STAGING_USER, StagingHost, keys_command, staging_root

from benchmarks.measure import CpuGroup
from stagebox.server.process import ServerProcess, free_port, stagebox_cmd
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
    """The sftp cases' sshd: ``tests/sshd.py``'s staging host (the staging account gets
    ``ForceCommand internal-sftp -u 0007`` and its keys from stagebox's
    AuthorizedKeysCommand ``command``), and root logs in with a generated key, so the
    peers (scp, sftp, rsync, rclone) and stagebox talk to the same sshd."""

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


@dataclass
class SftpStage:
    """One sftp case's servers under ``root``: a staging sshd, and a stagebox data dir in
    which uploader ``bench`` is registered and approved on an sftp staging box.

    ``start`` does the admin recipe once (untimed): box, uploader, ``stagebox register``,
    approval, then a snapshot of the data dir, then one small upload with
    ``--accept-new-host-key`` (the first contact records the host key in the client's
    known_hosts; the timed runs pass no flag). ``fresh_server`` restores the data dir from
    the snapshot, empties the uploader's staging directory and starts ``stagebox serve``,
    so each run starts with nothing stored and nothing staged. The data dir keeps one path
    because sshd's AuthorizedKeysCommand names it. Everything lives under ``root``, which
    the staging account must be able to traverse.
    """

    root: Path
    token: str = ""
    sshd: StagingSshd = field(init=False)

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
    def config(self) -> Path:
        return self.root / "client-config"

    @property
    def keys_home(self) -> Path:
        return KEYS_COMMANDS / f"{self.root.name}-{os.getpid()}"

    def client_env(self, state: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STAGEBOX_")}
        env.update(
            STAGEBOX_CONFIG_DIR=str(self.config),
            STAGEBOX_STATE_DIR=str(state),
            STAGEBOX_TOKEN=self.token,
        )
        return env

    def _run(self, argv: list[str], env: dict[str, str] | None = None) -> str:
        out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {out.returncode}\n{out.stderr[-3000:]}")
        return out.stdout

    def admin(self, *args: str) -> str:
        return self._run(stagebox_cmd("admin", "--data-dir", str(self.data), *args))

    def start(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        for parent in [self.root, *self.root.parents]:
            if parent.stat().st_mode & 0o001 == 0:
                raise RuntimeError(f"{parent} is not traversable by the staging account")
        staging_root(self.staging)
        KEYS_COMMANDS.mkdir(mode=0o755, exist_ok=True)
        shutil.rmtree(self.keys_home, ignore_errors=True)
        command = keys_command(self.data, self.keys_home)
        self.sshd = StagingSshd(self.root / "sshd", command=command)
        self.sshd.start()
        server = StageboxServer(self.data)
        self.token = self.admin("uploader", "add", UPLOADER).strip()
        self.admin(
            "box", "add", BOX, "--role", "staging", "--path", str(self.staging),
            "--sftp-host", "127.0.0.1", "--sftp-port", str(self.sshd.port),
            "--sftp-user", STAGING_USER,
        )  # fmt: skip
        server.start()
        try:
            env = self.client_env(self.root / "setup-state")
            self._run(stagebox_cmd("register", "--server", server.url), env)
            requests = json.loads(self.admin("requests", "list", "--json"))
            rid = next(r["id"] for r in requests if r["uploader"] == UPLOADER)
            self.admin("requests", "approve", str(rid), "--box", BOX)
        finally:
            server.stop()
        shutil.copytree(self.data, self.approved, symlinks=True)
        first = self.root / "first-contact"
        first.mkdir()
        (first / "hello.txt").write_text("first contact\n")
        server = self.fresh_server()
        try:
            upload = stagebox_cmd(
                "upload", str(first), "--server", server.url, "--dataset", "first-contact",
                "--method", "sftp", "--accept-new-host-key", "--json",
            )  # fmt: skip
            report = json.loads(self._run(upload, env))
        finally:
            server.stop()
        if report["totals"].get("verified") != 1:
            raise RuntimeError(f"the first-contact upload did not verify: {report}")

    def fresh_server(self) -> StageboxServer:
        """``stagebox serve`` on the data dir as it was right after the approval."""
        shutil.rmtree(self.data)
        shutil.copytree(self.approved, self.data, symlinks=True)
        for entry in self.staging.iterdir():  # the uploader's own directory, made at approval
            if entry.is_dir() and not entry.is_symlink():
                for child in entry.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            else:
                entry.unlink()
        server = StageboxServer(self.data)
        server.start()
        return server

    def sshd_logins(self) -> int:
        """Logins of the staging account so far (sshd logs each accepted key)."""
        try:
            text = self.sshd.log_path.read_text(errors="replace")
        except OSError:
            return 0
        return text.count(f"Accepted publickey for {STAGING_USER} ")

    def stop(self) -> None:
        """Stop sshd, drop the wrapper, and free the disk (the logs stay beside)."""
        with contextlib.suppress(AttributeError):
            self.sshd.stop()
        shutil.rmtree(self.keys_home, ignore_errors=True)
        for heavy in (self.data, self.approved, self.staging):
            shutil.rmtree(heavy, ignore_errors=True)
        with contextlib.suppress(OSError):
            KEYS_COMMANDS.rmdir()  # only when no other run's command is left in it
