"""Choosing how to stage: sftp when this installation's key is approved, else http."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stagebox.client import identity
from stagebox.client.api import StageboxClient
from stagebox.errors import Forbidden
from stagebox.transports.base import Transport


@dataclass
class Plan:
    method: str
    notice: str | None = None
    transport_factory: Callable[[], Transport] | None = None
    close: Callable[[], None] = lambda: None  # releases what the plan opened and nobody used


def _approved(client: StageboxClient, key: Path) -> tuple[dict[str, Any] | None, str]:
    """The approved request for this machine's key, or why there is none."""
    if not key.exists():
        return None, "no SSH key here yet (run: stagebox register)"
    public = key.with_name(key.name + ".pub")
    import asyncssh

    try:
        mine = asyncssh.import_public_key(public.read_text()).get_fingerprint("sha256")
    except (OSError, ValueError, asyncssh.KeyImportError):
        return None, f"cannot read {public} (run: stagebox register)"
    requests = [r for r in client.registrations() if r["fingerprint"] == mine]
    if not requests:
        return None, "this machine's key is not registered (run: stagebox register)"
    last = requests[-1]
    if last["state"] == "approved" and last.get("sftp"):
        return last, ""
    why = f"registration request {last['id']} is {last['state']}"
    if last.get("reason"):
        why += f" ({last['reason']})"
    return None, why


SSH_CLIENTS = ("auto", "openssh", "asyncssh")


def ssh_client() -> str:
    """The ``ssh`` setting: who carries SFTP's SSH (``auto``: OpenSSH's ssh if found)."""
    from stagebox.client import settings
    from stagebox.errors import InvalidInput

    chosen = settings.resolve("ssh", None) or "auto"
    if chosen not in SSH_CLIENTS:
        raise InvalidInput("ssh", f"must be {', '.join(SSH_CLIENTS)}", chosen)
    return chosen


def plan(
    client: StageboxClient,
    method: str,
    *,
    key: Path | None = None,
    known_hosts: Path | None = None,
    accept_new_host_key: bool = False,
) -> Plan:
    """``http`` as asked; ``sftp`` or refuse; ``auto``: sftp if approved, else http.

    ``auto`` on a machine that never ran ``stagebox register`` (no key) means
    http is the intended method: no notice. A machine that did register but is
    not approved (yet) is told why, once, on stderr.
    """
    if method == "http":
        return Plan("http")
    key = key or identity.key_path()
    if method == "auto" and not key.exists():
        return Plan("http")
    request, why = _approved(client, key)
    if request is None:
        if method == "sftp":
            raise Forbidden(f"sftp is not approved for this uploader: {why}")
        return Plan("http", notice=f"uploading over http: {why}")
    from stagebox import ssh
    from stagebox.transports.sftp import SftpTransport

    sftp = request["sftp"]
    ssh.check_private_key(key)
    target = ssh.SshTarget(sftp["host"], int(sftp["port"]), sftp["user"])
    options = ssh.SshOptions(
        key=key,
        known_hosts=known_hosts or identity.known_hosts_path(),
        accept_new_host_key=accept_new_host_key,
        host_key=sftp.get("host_key"),
        client=ssh_client(),
    )
    # stagebox's own endpoint sets modes itself and refuses chmod; OpenSSH's needs them.
    modes = sftp.get("endpoint", "openssh") == "openssh"
    # Once, before any thread connects: a first contact is recorded once.
    ssh.run(ssh.trusted_keys(target, options))
    # The first thread's connection is made while the tree is scanned and registered.
    first = SftpTransport(target, options, sftp["root"], set_modes=modes)
    first.connect_soon()
    spare = [first]

    def factory() -> Transport:
        try:
            return spare.pop()
        except IndexError:
            return SftpTransport(target, options, sftp["root"], set_modes=modes)

    def close() -> None:
        while spare:
            spare.pop().close()

    return Plan("sftp", transport_factory=factory, close=close)
