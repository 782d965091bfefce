"""The ``stagebox`` command line: thin commands over the library.

``main`` answers sshd's ``AuthorizedKeysCommand`` (``stagebox admin
authorized-keys USER``) without loading the rest of the CLI: sshd runs it at
every connection, so it must take milliseconds, not the better part of a second.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Console entry point."""
    from stagebox.authorized_keys import fast_path

    if fast_path(sys.argv[1:]):
        return
    from stagebox.cli.app import run

    run()
