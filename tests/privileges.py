"""Run a command that cannot read what mode bits forbid, even when the tests run as root.

Root reads a ``chmod 000`` folder through CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH; a test of what happens to an unreadable folder runs its
subject in a child process without those two capabilities (it stays root, so
pytest's 0700 tmp dirs remain its own).
"""

from __future__ import annotations

import os
import shutil

import pytest

CAPS = ("dac_override", "dac_read_search")


def without_dac_override(cmd: list[str]) -> list[str]:
    """``cmd`` prefixed so that it runs without root's power to ignore file modes."""
    if os.geteuid() != 0:
        return cmd
    if setpriv := shutil.which("setpriv"):
        drop = ",".join(f"-{cap}" for cap in CAPS)
        return [setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}", "--", *cmd]
    if capsh := shutil.which("capsh"):
        drop = ",".join(f"cap_{cap}" for cap in CAPS)
        return [capsh, f"--drop={drop}", "--", "-c", 'exec "$@"', "capsh", *cmd]
    pytest.skip("running as root without setpriv or capsh to drop CAP_DAC_OVERRIDE")
