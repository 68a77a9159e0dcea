"""Configuration read once under one prefix scheme, documented by a table generated from it, and the
messages a newcomer gets when something is missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import free_port

from comfy_saas import cli
from comfy_saas.config import Settings
from comfy_saas.errors import ComfyUnavailable
from comfy_saas.local import launch_comfyui

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_table_is_the_settings_table():
    readme = (ROOT / "README.md").read_text()
    documented = readme.split("<!-- config:begin -->")[1].split("<!-- config:end -->")[0].strip()
    assert documented == cli.config_table()


def test_every_section_reads_its_own_prefix():
    settings = Settings.from_env({
        "COMFY_MAX_ATTEMPTS": "5", "COMFY_LIMIT_MAX_MEDIA_ITEMS": "3", "COMFY_R2_BUCKET": "outs",
        "COMFY_COMFYUI_ARGS": "--cpu", "COMFY_TWIN_PROFILE": "modal", "COMFY_CLIENT_URL": "http://api:1",
        "R2_BUCKET": "ignored", "COMFYUI_URL": "ignored"})
    assert (settings.max_attempts, settings.limits.max_media_items, settings.r2.bucket) == (5, 3, "outs")
    assert (settings.comfyui.args, settings.twin.profile, settings.client.url) == ("--cpu", "modal", "http://api:1")
    assert settings.comfyui.url == ""


def test_no_credential_shows_in_the_settings_repr():
    """Settings end up in tracebacks and logs; credentials must not come with them."""
    values = {"COMFY_R2_ACCESS_KEY_ID": "AKIA-secret-1", "COMFY_R2_SECRET_ACCESS_KEY": "secret-2",
              "COMFY_API_KEYS": "secret-3:alice", "COMFY_WEBHOOK_SECRET": "whsec_secret4",
              "COMFY_URL_SIGNING_SECRET": "secret-5", "COMFY_CLIENT_API_KEY": "secret-6"}
    settings = Settings.from_env(values)
    assert settings.r2.secret_access_key == "secret-2" and settings.client.api_key == "secret-6"
    assert not [v for v in values.values() if v in repr(settings)]


@pytest.mark.parametrize(("env", "named"), [({"COMFY_MAX_ATTEMPTS": "three"}, "COMFY_MAX_ATTEMPTS"),
                                            ({"COMFY_STORAGE_BACKEND": "ftp"}, "COMFY_STORAGE_BACKEND"),
                                            ({"COMFY_TWIN_PROFILE": "fast"}, "COMFY_TWIN_PROFILE")])
def test_a_bad_value_names_its_variable(env: dict, named: str):
    with pytest.raises(ValueError, match=named):
        Settings.from_env(env)


def test_a_retention_longer_than_modal_keeps_records_is_refused():
    Settings(retention_days=30).check_retention(entries_expire=False)  # local twins keep records
    with pytest.raises(ValueError, match=r"COMFY_RETENTION_DAYS=30.*7 days"):
        Settings(retention_days=30).check_retention(entries_expire=True)


def test_a_cli_command_that_cannot_reach_the_server_says_where_and_what_to_do(capsys: pytest.CaptureFixture):
    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["status", "abc", "--url", url]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert url in err and "comfy-saas serve" in err and "--url" in err and "Traceback" not in err


def _fake_comfyui(tmp_path: Path, body: str) -> Path:
    folder = tmp_path / "fake-comfyui"
    folder.mkdir()
    (folder / "main.py").write_text(body)
    return folder


def test_a_comfyui_that_fails_to_start_says_why(tmp_path: Path):
    folder = _fake_comfyui(tmp_path, "import sys\nprint('Loading...')\n"
                                     "print('AssertionError: Torch not compiled with CUDA enabled')\nsys.exit(1)\n")
    settings = Settings(data_dir=tmp_path).comfyui
    with pytest.raises(ComfyUnavailable) as info:
        launch_comfyui(Settings(data_dir=tmp_path, comfyui=type(settings)(dir=str(folder))), tmp_path / "comfy")
    message = info.value.message
    assert "exited with code 1" in message and str(tmp_path / "comfy" / "comfyui.log") in message
    assert "Torch not compiled with CUDA enabled" in message and "--comfyui-args=--cpu" in message


def test_extra_comfyui_flags_reach_the_launched_comfyui(tmp_path: Path):
    record = tmp_path / "argv.json"
    folder = _fake_comfyui(tmp_path, f"import json, sys\njson.dump(sys.argv, open({str(record)!r}, 'w'))\n"
                                     "sys.exit(2)\n")
    source = Settings().comfyui
    settings = Settings(data_dir=tmp_path, comfyui=type(source)(dir=str(folder), args="--cpu --preview-method none",
                                                                python=sys.executable))
    with pytest.raises(ComfyUnavailable):
        launch_comfyui(settings, tmp_path / "comfy")
    argv = json.loads(record.read_text())
    assert argv[argv.index("--cpu"):] == ["--cpu", "--preview-method", "none"]
