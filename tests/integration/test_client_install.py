"""`pip install stagebox` on an instrument PC: the client alone, talking to a full server.

The bare package is installed into a fresh venv (no server extra) and must run
upload, verify, register, pack, push and bag validate; the server commands say
which extra they need instead of a traceback.
"""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest

from tests.bags import make_bag_dir, to_tar
from tests.servers import StageboxServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SERVER_ONLY = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "boto3", "moto")
DECLARATION = """\
pipeline: demo
package:
  call:
    uploadType: calls
    files:
      calls:
        type: tab-delimited
        file: $DATA_FILE_PREFIX.calls.txt
"""


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding `pip install stagebox` and nothing else."""
    root = tmp_path_factory.mktemp("client-venv")
    venv.create(root, with_pip=True)
    python = root / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    return root


def client(venv_root: Path, *args: str, env: dict[str, str] | None = None, cwd=None):
    # Run from outside the checkout, so `import stagebox` finds the installed copy only.
    return subprocess.run(
        [str(venv_root / "bin" / "stagebox"), *args],
        capture_output=True,
        text=True,
        env={k: v for k, v in {**os.environ, **(env or {})}.items() if k != "PYTHONPATH"},
        cwd=cwd or venv_root,
        timeout=120,
    )


def test_the_bare_install_has_no_server_parts(client_venv: Path):
    python = str(client_venv / "bin" / "python")
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True
    )
    names = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
    assert "stagebox" in names
    assert not names & set(SERVER_ONLY), names & set(SERVER_ONLY)
    where = subprocess.run(
        [python, "-c", "import stagebox, sys; print(stagebox.__file__)"],
        capture_output=True,
        text=True,
        cwd=client_venv,
    )
    assert str(client_venv) in where.stdout, where.stdout  # not the checkout's src


def test_the_client_uploads_to_a_full_server(
    client_venv: Path, server: StageboxServer, token: str, tmp_path: Path, state_dir: Path
):
    src = tmp_path / "instrument"
    (src / "ds1" / "raw").mkdir(parents=True)
    (src / "ds1" / "raw" / "big.bin").write_bytes(os.urandom(12 << 20))
    (src / "ds1" / "notes.txt").write_text("calibrated\n")
    env = {"STAGEBOX_STATE_DIR": str(state_dir)}
    for name, value in (("server", server.url), ("token", token)):
        assert client(client_venv, "config", "set", name, value, env=env).returncode == 0

    uploaded = client(client_venv, "upload", str(src), env=env)
    assert uploaded.returncode == 0, uploaded.stderr
    verified = client(client_venv, "verify", str(src), env=env)
    assert verified.returncode == 0, verified.stderr
    status = client(client_venv, "register", "--status", env=env)
    assert status.returncode == 0 and "not registered" in status.stdout, status.stderr


def test_pack_push_and_bag_validate_run_without_the_server_extra(
    client_venv: Path, tmp_path: Path, server: StageboxServer, token: str
):
    (tmp_path / "run1.calls.txt").write_text("chrom\tstart\nchr1\t10\n")
    declaration = tmp_path / "pipeline.yml"
    declaration.write_text(DECLARATION)
    packed = client(
        client_venv, "pack", str(declaration), "--action", "call",
        "--prefix", str(tmp_path / "run1"),
    )  # fmt: skip
    assert packed.returncode == 0, packed.stderr
    package = next(tmp_path.glob("*.zip"))
    pushed = client(client_venv, "push", str(package), "--server", server.url, "--token", token)
    assert pushed.returncode == 0, pushed.stderr

    bag = to_tar(make_bag_dir(tmp_path / "bags", "bag1"))
    checked = client(client_venv, "bag", "validate", str(bag))
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize(
    "argv",
    [["serve"], ["admin", "uploader", "list"], ["ingest", "list"], ["demo"]],
)
def test_server_commands_name_the_extra(client_venv: Path, argv: list[str]):
    result = client(client_venv, *argv)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "pip install 'stagebox[server]'" in result.stderr, result.stderr
