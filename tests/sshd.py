"""A real OpenSSH staging host on 127.0.0.1, set up as the README's recipe says.

A dedicated staging account in a group shared with the server, a setgid
staging root (2770) it can write, and sshd with ``Match User`` +
``ForceCommand internal-sftp``. Keys come from ``stagebox admin
authorized-keys %u`` (AuthorizedKeysCommand) or from the file ``export-keys``
wrote. The tests run as root, so the account is created when missing.
"""

from __future__ import annotations

import fcntl
import grp
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from stagebox.server.process import free_port, stop_group, wait_listening

SSHD = Path("/usr/sbin/sshd")
STAGING_USER = "stagebox-sftp"
STAGING_GROUP = "stagebox-stage"
# The account of an ``sshd`` box: its keys' forced command is stagebox's session
# relay, which sshd runs through the account's shell (internal-sftp needs none).
RELAY_USER = "stagebox-ssh"

CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/ssh_host_ed25519_key
PidFile {dir}/sshd.pid
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
StrictModes {strict}
UsePAM no
UseDNS no
PrintMotd no
LoginGraceTime {grace}
AuthorizedKeysFile {keys_file}
Subsystem sftp internal-sftp
Match User {user}
    {keys_command}
    {force_command}
    AllowTcpForwarding no
    X11Forwarding no
    PermitTTY no
"""

# Only with ``root_keys_file`` (the benchmarks' scp/rsync/sftp peers): root may log in
# with a key from that file; the staging account's rules above are unchanged.
ROOT_LOGIN = """\
Match User root
    AuthorizedKeysFile {keys_file}
"""


def ensure_account(user: str = STAGING_USER) -> None:
    """A staging account and its group, created once (the tests run as root), one
    test process at a time (the suite runs in several)."""
    if os.geteuid() != 0:
        raise RuntimeError("the sftp tests set up a staging account and must run as root")
    with open("/run/stagebox-tests-accounts.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _ensure_account(user)


def _ensure_account(user: str) -> None:
    try:
        grp.getgrnam(STAGING_GROUP)
    except KeyError:
        subprocess.run(["groupadd", "--system", STAGING_GROUP], check=True)
    relay = user == RELAY_USER
    shell, home = ("/bin/sh", "/") if relay else ("/usr/sbin/nologin", "/nonexistent")
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--gid",
                STAGING_GROUP,
                "--home-dir",
                home,
                "--no-create-home",
                "--shell",
                shell,
                user,
            ],
            check=True,
        )
    # A "!" password locks the account and sshd then refuses even keys.
    subprocess.run(["usermod", "-p", "*", "-s", shell, "-d", home, user], check=True)


def staging_root(path: Path) -> Path:
    """A setgid directory the staging account writes through its group."""
    ensure_account()
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 0, grp.getgrnam(STAGING_GROUP).gr_gid)
    os.chmod(path, 0o2770)
    return path


def keys_command(data_dir: Path, home: Path) -> Path:
    """A root-owned wrapper sshd may run (it refuses commands under /tmp).

    The relay of an sshd box runs as the staging account, which cannot reach the
    tests' interpreter (under root's home): its keys name Debian's python3.
    """
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o755)
    script = home / "authorized-keys"
    script.write_text(
        "#!/bin/sh\n"
        "export STAGEBOX_RELAY_PYTHON=/usr/bin/python3\n"
        f'exec {sys.executable} -m stagebox admin --data-dir {data_dir} authorized-keys "$1"\n'
    )
    os.chmod(script, 0o755)
    return script


@dataclass
class StagingHost:
    """sshd on a free port; keys from ``command`` (a path) or ``keys_file``.

    ``root_keys_file`` (default off) also lets root log in with the keys in that file,
    for the benchmarks' peers that need a shell (rsync) on the same sshd.
    """

    root: Path
    command: Path | None = None
    keys_file: Path | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    root_keys_file: Path | None = None
    user: str = STAGING_USER
    force_command: str | None = "internal-sftp -u 0007"
    login_grace: int = 120

    @property
    def host_key(self) -> Path:
        return self.root / "ssh_host_ed25519_key"

    @property
    def log_path(self) -> Path:
        return self.root / "sshd.log"

    def start(self, timeout: float = 20.0) -> None:
        ensure_account(self.user)
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)],
                check=True,
            )
        command = (
            f"AuthorizedKeysCommand {self.command} %u\n    AuthorizedKeysCommandUser root"
            if self.command
            else ""
        )
        config = self.root / "sshd_config"
        text = CONFIG.format(
            port=self.port,
            dir=self.root,
            user=self.user,
            keys_command=command,
            force_command=f"ForceCommand {self.force_command}" if self.force_command else "",
            grace=self.login_grace,
            keys_file=self.keys_file or "none",
            # A keys file under /tmp (or a clone there) cannot pass StrictModes' path checks.
            strict="no" if self.keys_file or self.root_keys_file else "yes",
        )
        if self.root_keys_file is not None:
            text = text.replace("PermitRootLogin no\n", "PermitRootLogin prohibit-password\n")
            text += ROOT_LOGIN.format(keys_file=self.root_keys_file)
        config.write_text(text)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        subprocess.run([str(SSHD), "-t", "-f", str(config)], check=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_listening(self.port, self.proc, self.log_path, timeout, banner=b"SSH-")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, timeout=10)
        self.proc = None


def traversable_dir(prefix: str) -> Path:
    """A fresh directory the staging account can reach (pytest's tmp is 0700)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    return path


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
