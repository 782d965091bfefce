"""A new user's first hour, through the CLI as they run it.

Each mistake gets one line naming the thing and what to do, exit 2 for usage and
configuration errors, and never a traceback; settings follow one precedence
(flag > environment > config file > default) in every command.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
from pathlib import Path

import httpx
import pytest
import typer.main

from stagebox.cli.app import build
from stagebox.server.process import free_port, stagebox_cmd, stop_group, wait_healthy
from tests.servers import StageboxServer

pytestmark = pytest.mark.integration


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout=120):
    return subprocess.run(
        stagebox_cmd(*args),
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80", **(env or {})},
        cwd=cwd,
        timeout=timeout,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The run failed with ``code`` and one ``stagebox:`` line holding every needle."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def commands() -> list[list[str]]:
    found: list[list[str]] = []

    def walk(command: object, path: list[str]) -> None:
        found.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(build()), [])
    return found


def test_every_help_page_renders_at_80_columns():
    # `push --help` used to crash: rich read "[/srv/data]" in a help text as markup.
    for path in commands():
        result = run(*path, "--help")
        assert result.returncode == 0, (path, result.stderr)
        assert "Traceback" not in result.stderr, (path, result.stderr)
    assert "[default: /srv/data]" in run("push", "--help").stdout


def test_version():
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("stagebox ")


# --- the server's settings -----------------------------------------------------------------


def test_serve_and_admin_read_one_config_file(tmp_path: Path):
    """The README's /etc/stagebox.toml: `serve` and `admin` use the same data dir, so the
    token the admin issues is accepted by the server."""
    data = tmp_path / "srv" / "stagebox"
    file_port, env_port = free_port(), free_port()
    config = tmp_path / "stagebox.toml"
    config.write_text(f'data_dir = "{data}"\nport = {file_port}\nhost = "127.0.0.1"\n')
    env = {"STAGEBOX_CONFIG": str(config)}
    assert run("admin", "init", env=env).returncode == 0
    token = run("admin", "uploader", "add", "microscope-1", env=env).stdout.strip()
    # The environment beats the file: the server listens on env_port, not file_port.
    proc = subprocess.Popen(
        stagebox_cmd("serve"),
        env={**os.environ, **env, "STAGEBOX_PORT": str(env_port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=tmp_path,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{env_port}", 30, proc)
        answer = httpx.get(
            f"http://127.0.0.1:{env_port}/api/v1/uploader",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["name"] == "microscope-1"
    finally:
        stop_group(proc)
    assert (data / "catalog.db").exists()
    assert not (tmp_path / "stagebox-data").exists()


def test_a_flag_beats_the_environment_and_the_file(tmp_path: Path):
    config = tmp_path / "stagebox.toml"
    config.write_text(f'data_dir = "{tmp_path / "from-file"}"\n')
    env = {"STAGEBOX_CONFIG": str(config), "STAGEBOX_DATA_DIR": str(tmp_path / "from-env")}
    assert run("admin", "--data-dir", str(tmp_path / "from-flag"), "init", env=env).returncode == 0
    assert run("admin", "init", env=env).returncode == 0
    assert (tmp_path / "from-flag" / "catalog.db").exists()
    assert (tmp_path / "from-env" / "catalog.db").exists()
    assert not (tmp_path / "from-file").exists()
    # The ingest group takes the data dir the same way, before its subcommand.
    flagged = run("ingest", "--data-dir", str(tmp_path / "from-flag"), "list", "--json", env=env)
    assert flagged.returncode == 0, flagged.stderr
    assert run("ingest", "list", "--json", env=env).returncode == 0
    missing = run("ingest", "--data-dir", str(tmp_path / "nowhere"), "list", env=env)
    one_line_error(missing, 2, "no stagebox data dir", "nowhere", "--data-dir")


@pytest.mark.parametrize(
    "argv",
    [
        ["admin", "uploader", "add", "microscope-1"],
        ["admin", "uploader", "list"],
        ["ingest", "list"],
        ["serve", "--port", "1"],
    ],
)
def test_no_data_dir_is_created_without_init(tmp_path: Path, argv: list[str]):
    """Run in the wrong folder, admin used to make ./stagebox-data and print a token the
    real server refuses."""
    result = run(*argv, cwd=tmp_path)
    one_line_error(result, 2, "no stagebox data dir", str(tmp_path / "stagebox-data"), "init")
    assert list(tmp_path.iterdir()) == []


def test_serve_init_creates_the_data_dir(tmp_path: Path):
    server = StageboxServer(tmp_path / "new" / "data")  # started with --init
    server.start()
    try:
        assert (tmp_path / "new" / "data" / "catalog.db").exists()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ("data_dir = [", ("not valid TOML",)),
        ("no_such_setting = 1\n", ("unknown setting 'no_such_setting'",)),
        ("port = 'eighty'\n", ("setting port", "stagebox.toml")),
        (None, ("STAGEBOX_CONFIG names", "does not exist")),
    ],
)
def test_a_bad_config_file_is_one_line(tmp_path: Path, content: str | None, needles):
    config = tmp_path / "stagebox.toml"
    if content is not None:
        config.write_text(content)
    for argv in (["admin", "uploader", "list"], ["serve"], ["ingest", "list"]):
        result = run(*argv, env={"STAGEBOX_CONFIG": str(config)}, cwd=tmp_path)
        one_line_error(result, 2, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if content is None else [config.name])


def test_bad_values_and_tls_files_are_one_line(tmp_path: Path):
    assert run("admin", "--data-dir", str(tmp_path / "d"), "init").returncode == 0
    base = ["serve", "--data-dir", str(tmp_path / "d")]
    one_line_error(
        run(*base, env={"STAGEBOX_PORT": "http"}), 2, "setting port (from STAGEBOX_PORT)"
    )
    one_line_error(
        run(*base, "--ssl-certfile", "/nonexistent.pem"),
        2,
        "ssl_certfile (from --ssl-certfile)",
        "/nonexistent.pem",
    )
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    one_line_error(run(*base, "--ssl-certfile", str(junk)), 2, "TLS certificate", str(junk))


def test_debug_shows_the_traceback(tmp_path: Path):
    quiet = run("admin", "uploader", "list", cwd=tmp_path)
    one_line_error(quiet, 2, "no stagebox data dir")
    loud = run("--debug", "admin", "uploader", "list", cwd=tmp_path)
    assert loud.returncode != 0 and "Traceback" in loud.stderr
    env_loud = run("admin", "uploader", "list", cwd=tmp_path, env={"STAGEBOX_DEBUG": "1"})
    assert "Traceback" in env_loud.stderr


def test_tables_keep_whole_names_at_80_columns(tmp_path: Path):
    data = tmp_path / "d"
    assert run("admin", "--data-dir", str(data), "init").returncode == 0
    name = "staging-microscope-instrument-01"
    assert run("admin", "--data-dir", str(data), "uploader", "add", name).returncode == 0
    box = run(
        "admin",
        "--data-dir",
        str(data),
        "box",
        "add",
        "staging-s3-archive-02",
        "--role",
        "staging",
        "--backend",
        "local",
        "--path",
        str(tmp_path / "b"),
    )
    assert box.returncode == 0, box.stderr
    assert name in run("admin", "--data-dir", str(data), "uploader", "list").stdout
    assert "staging-s3-archive-02" in run("admin", "--data-dir", str(data), "box", "list").stdout


# --- the client's settings -----------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "run1").mkdir(parents=True)
    (src / "run1" / "a.dat").write_bytes(os.urandom(1000))
    (src / "run1" / "b.dat").write_bytes(os.urandom(3000))
    return src


def test_an_instrument_pc_runs_upload_with_nothing_more(
    server: StageboxServer, token: str, tree: Path, state_dir: Path
):
    env = {"STAGEBOX_STATE_DIR": str(state_dir)}
    assert run("config", "set", "server", server.url, env=env).returncode == 0
    assert run("config", "set", "token", token, env=env).returncode == 0
    assert run("config", "set", "structure", "dataset", env=env).returncode == 0
    path = Path(run("config", "path", env=env).stdout.strip())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    shown = run("config", "show", env=env).stdout
    assert token not in shown and "server = " + server.url in shown

    result = run("upload", str(tree), env=env)
    assert result.returncode == 0, result.stderr
    # http is the intended method on a machine that never registered: no notice.
    assert "no SSH key" not in result.stderr and "uploading over http" not in result.stderr
    assert run("verify", str(tree), env=env).returncode == 0

    # The environment beats the file, a flag beats the environment.
    down = f"http://127.0.0.1:{free_port()}"
    refused = run("verify", str(tree), env={**env, "STAGEBOX_SERVER": down})
    assert refused.returncode == 1 and down in refused.stderr
    flagged = run("verify", str(tree), "--server", server.url, env={**env, "STAGEBOX_SERVER": down})
    assert flagged.returncode == 0, flagged.stderr
    bad_token = run("verify", str(tree), env={**env, "STAGEBOX_TOKEN": "sbx_nope"})
    assert bad_token.returncode != 0

    # register --status needs no flag either once the config holds server and token.
    status = run("register", "--status", env=env)
    assert status.returncode == 0, status.stderr
    assert "not registered" in status.stdout


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["upload", "SRC", "--token", "t"], ("no server", "STAGEBOX_SERVER", "config set server")),
        (["upload", "SRC", "--server", "http://127.0.0.1:9"], ("no token", "STAGEBOX_TOKEN")),
        (["upload", "SRC", "--server", "localhost:8080", "--token", "t"], ("must be http://",)),
        (["verify", "SRC", "--server", "ftp://x", "--token", "t"], ("must be http://",)),
        (["register", "--status", "--server", "127.0.0.1", "--token", "t"], ("must be http://",)),
        (["config", "set", "colour", "blue"], ("unknown setting",)),
        (["config", "set", "server", "example.org"], ("must be http://",)),
    ],
)
def test_client_usage_errors_exit_2(tree: Path, argv: list[str], needles):
    argv = [str(tree) if a == "SRC" else a for a in argv]
    one_line_error(run(*argv), 2, *needles)


def test_a_bad_client_config_file_is_one_line(tree: Path):
    path = Path(run("config", "path").stdout.strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("server = \n")
    one_line_error(run("upload", str(tree)), 2, str(path), "not valid TOML")
    path.write_text('colour = "blue"\n')
    one_line_error(run("upload", str(tree)), 2, str(path), "unknown setting 'colour'")


@pytest.mark.parametrize("command", ["upload", "verify"])
def test_a_terminated_json_run_still_prints_one_document(
    server: StageboxServer, token: str, tmp_path: Path, state_dir: Path, command: str
):
    src = tmp_path / "many"
    for d in range(20):
        (src / f"ds{d}").mkdir(parents=True)
        for i in range(400):
            (src / f"ds{d}" / f"f{i}.dat").write_bytes(os.urandom(2000))
    proc = subprocess.Popen(
        stagebox_cmd(command, str(src), "--server", server.url, "--token", token, "--json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "STAGEBOX_STATE_DIR": str(state_dir)},
    )
    assert proc.stdout is not None
    first = proc.stdout.read(1)  # the run has begun writing its document
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()  # not communicate(): it would skip what read(1) buffered
    err = proc.stderr.read() if proc.stderr else b""
    proc.wait(timeout=60)
    document = json.loads(first + rest)
    assert proc.returncode == 143, err
    assert len(document["files"]) == document["totals"]["files"] < 20 * 400  # cut short
    assert "interrupted" in document.get("error", ""), document.keys()
    assert b"Traceback" not in err
