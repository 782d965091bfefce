from pathlib import Path

from stagebox.config import Settings, load_settings


def test_toml_file_then_env_then_arguments(tmp_path: Path, monkeypatch):
    config = tmp_path / "stagebox.toml"
    config.write_text('data_dir = "/srv/from-file"\nmd5 = true\nport = 9000\n')
    monkeypatch.setenv("STAGEBOX_CONFIG", str(config))
    monkeypatch.setenv("STAGEBOX_PORT", "9100")
    settings = load_settings(host="0.0.0.0", data_dir=None)
    assert settings.data_dir == Path("/srv/from-file")  # file
    assert settings.md5 is True  # file
    assert settings.port == 9100  # env beats file
    assert settings.host == "0.0.0.0"  # argument beats all
    assert settings.algorithms == ("sha256", "md5")


def test_embedded_defaults_live_in_the_data_dir(tmp_path: Path):
    settings = Settings(data_dir=tmp_path)
    assert settings.catalog_url == f"sqlite:///{tmp_path / 'catalog.db'}"
    assert settings.staging_path == tmp_path / "staging"
    assert settings.store_path == tmp_path / "store"
