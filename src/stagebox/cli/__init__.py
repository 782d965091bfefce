"""The ``stagebox`` command line: thin commands over the library.

``main`` answers sshd's ``AuthorizedKeysCommand`` (``stagebox admin
authorized-keys USER``) and runs its forced ``stagebox sftp-session`` without
loading the rest of the CLI: sshd runs them at every connection and session, so
they must take milliseconds, not the better part of a second.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Console entry point."""
    if sys.argv[1:2] == ["sftp-session"]:
        from stagebox.sftpd.relay import main as relay

        sys.exit(relay(sys.argv[2:]))
    from stagebox.authorized_keys import fast_path

    if fast_path(sys.argv[1:]):
        return
    from stagebox.cli.app import run

    run()
