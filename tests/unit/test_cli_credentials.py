"""Registry credentials saved by ``silo login`` are readable by their owner only, also when an
older config.json was world-readable."""

from __future__ import annotations

import os
import stat

from silobox.cli.commands import registry


def test_credentials_file_is_0600_even_over_an_older_0644_one(tmp_path, monkeypatch):
    monkeypatch.setenv("SILOBOX_CONFIG", str(tmp_path / "cfg"))
    path = registry.config_path()
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write("{}")
    os.chmod(path, 0o644)
    registry._save_config({"auths": {"r.example:5000": {"auth": "dXNlcjpwYXNz"}}})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert registry._load_config()["auths"]["r.example:5000"]["auth"] == "dXNlcjpwYXNz"
    assert [n for n in os.listdir(os.path.dirname(path)) if n != "config.json"] == []


def test_a_new_credentials_directory_is_0700(tmp_path, monkeypatch):
    monkeypatch.setenv("SILOBOX_CONFIG", str(tmp_path / "new"))
    registry._save_config({"auths": {}})
    assert stat.S_IMODE(os.stat(tmp_path / "new").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(registry.config_path()).st_mode) == 0o600
