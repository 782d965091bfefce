"""`stagebox bag validate`: 0 when valid, 1 with every error on stderr, 2 for usage errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from stagebox.cli.app import run
from tests.bags import broken_bag, make_bag_dir, to_tar


def stagebox(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["stagebox", *args])
    with pytest.raises(SystemExit) as exited:
        run()
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_a_valid_bag_exits_0_with_one_line_on_stdout(tmp_path, monkeypatch, capsys):
    tar = to_tar(make_bag_dir(tmp_path))

    code, out, err = stagebox(monkeypatch, capsys, "bag", "validate", str(tar))

    assert code == 0
    assert out == f"valid: {tar} (5 payload files, 10269 bytes)\n"
    assert err == ""


def test_an_invalid_bag_exits_1_with_every_error_on_stderr(tmp_path, monkeypatch, capsys):
    bag = broken_bag(tmp_path, "extra_payload")

    code, out, err = stagebox(monkeypatch, capsys, "bag", "validate", str(bag))

    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        "error: bag-info.txt: Payload-Oxum 10269.5 does not match the payload: "
        "10289 bytes in 6 files",
        "error: data/new.txt: payload file not listed in manifest-md5.txt, manifest-sha256.txt, "
        "manifest-sha512.txt",
    ]


def test_warnings_are_printed_but_do_not_fail(tmp_path, monkeypatch, capsys):
    tar = to_tar(make_bag_dir(tmp_path), tmp_path / "deposit.tar")

    code, out, err = stagebox(monkeypatch, capsys, "bag", "validate", str(tar))

    assert code == 0 and out.startswith("valid: ")
    assert err == "warning: the top-level directory bag1 is not named like the archive (deposit)\n"


def test_fast_skips_digests(tmp_path, monkeypatch, capsys):
    bag = broken_bag(tmp_path, "wrong_digest")

    assert stagebox(monkeypatch, capsys, "bag", "validate", str(bag))[0] == 1
    assert stagebox(monkeypatch, capsys, "bag", "validate", "--fast", str(bag))[0] == 0


def test_profiles_by_name_or_file(tmp_path, monkeypatch, capsys):
    bag = make_bag_dir(tmp_path, aptrust_info={"Title": "", "Access": "Everyone"})
    tar = to_tar(bag)
    lab = tmp_path / "lab.json"
    lab.write_text(json.dumps({"Bag-Info": {"Contact-Name": {"required": True}}}))

    code, _, err = stagebox(
        monkeypatch, capsys, "bag", "validate", str(tar), "--profile", "aptrust"
    )
    assert code == 1
    assert err.splitlines() == [
        "error: aptrust-info.txt: required tag Title is empty (profile aptrust)",
        "error: aptrust-info.txt: tag Access has value 'Everyone', which is not allowed "
        "(profile aptrust); allowed: 'Consortia', 'Institution', 'Restricted'",
        "error: aptrust-info.txt: required tag Storage-Option is missing (profile aptrust)",
    ]
    code, _, err = stagebox(monkeypatch, capsys, "bag", "validate", str(bag), "--profile", str(lab))
    assert code == 1
    assert err == "error: bag-info.txt: required tag Contact-Name is missing (profile lab)\n"
    for name in ("none", "auto", "btr"):
        code, _, err = stagebox(monkeypatch, capsys, "bag", "validate", str(bag), "--profile", name)
        assert code == (0 if name == "none" else 1), (name, err)
    assert "declares no BagIt-Profile-Identifier" in err or "BagIt-Profile-Identifier" in err
    code, _, err = stagebox(monkeypatch, capsys, "bag", "validate", str(bag), "--profile", "apt")
    assert code == 2
    assert err == (
        "stagebox: --profile: no such profile file 'apt' (or use one of aptrust, btr, auto, none)\n"
    )


def test_usage_errors_exit_2(tmp_path, monkeypatch, capsys):
    bad_profile = tmp_path / "bad.json"
    bad_profile.write_text("{")
    bag = make_bag_dir(tmp_path)

    code, _, err = stagebox(monkeypatch, capsys, "bag", "validate", str(tmp_path / "missing.tar"))
    assert code == 2
    assert err.startswith(f"stagebox: {tmp_path / 'missing.tar'}: cannot read the bag")

    code, _, err = stagebox(
        monkeypatch, capsys, "bag", "validate", str(bag), "--profile", str(bad_profile)
    )
    assert code == 2
    assert err.startswith(f"stagebox: {bad_profile}: not valid JSON")

    code, _, err = stagebox(monkeypatch, capsys, "bag", "validate", str(bag), "--profile", "nope")
    assert code == 2 and "no such profile file 'nope'" in err


def test_the_installed_command_answers(tmp_path):
    tar = to_tar(make_bag_dir(tmp_path))

    done = subprocess.run(
        [sys.executable, "-m", "stagebox", "bag", "validate", str(tar)],
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("valid: ")


def test_a_dart_style_tar_is_valid_with_a_warning(tmp_path, monkeypatch, capsys):
    tar = to_tar(make_bag_dir(tmp_path), end_blocks=False)

    code, out, err = stagebox(monkeypatch, capsys, "bag", "validate", str(tar))

    assert code == 0, err
    assert out.startswith(f"valid: {tar}")
    assert err == (
        "warning: bag1.tar: no end-of-archive marker after bag1/tagmanifest-sha512.txt "
        "(as DART writes tars): read to its end\n"
    )
