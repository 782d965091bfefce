"""Servers the benchmarks talk to: a fresh ``stagebox serve`` per run, one local sshd, and
for the sftp cases a staging sshd set up as the README's recipe says (``tests/sshd.py``)."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from stagebox.server.process import ServerProcess, free_port
from tests.sshd import StagingHost

SSHD = Path("/usr/sbin/sshd")


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the process group of ``proc`` (started with a new session), then SIGKILL."""
    if proc.poll() is not None:
        return
    try:  # descendants that left the group (sshd sessions call setsid) are ended by pid
        strays = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        strays = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
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

    @property
    def host_public_key(self) -> Path:
        assert self.host is not None
        return self.host.host_key.with_suffix(".pub")

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
        self.host.start(timeout)
        self.proc = self.host.proc
        self.wait_for_login(timeout)

    def stop(self) -> None:
        super().stop()
        if self.host is not None:
            self.host.proc = None
