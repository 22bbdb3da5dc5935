"""Settings: the IMAGED_ prefix, the original service's variable names, and secrets kept secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from imaged.errors import ConfigError
from imaged.providers.aliyun import AliyunProvider, AliyunSettings
from imaged.providers.liblibai import LiblibProvider, LiblibSettings
from imaged.settings import Settings
from imaged.storage.s3 import S3Settings
from imaged.webhooks import WebhookSettings


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env from the working tree
    settings = Settings()
    assert settings.amqp_prefix == "imaged"
    assert settings.mongodb_url.get_secret_value() == "mongodb://127.0.0.1:27017"
    assert settings.http_port == 8001 and settings.http_host == "127.0.0.1"
    assert str(settings.image_dir) == "data/images"
    aliyun, liblib = AliyunSettings(), LiblibSettings()
    assert aliyun.base_url == "https://dashscope.aliyuncs.com/api/v1" and aliyun.api_key is None
    assert liblib.base_url == "https://openapi.liblibai.cloud" and liblib.access_key is None


def test_original_variable_names_are_aliases(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MONGODB_URL", "mongodb://db.example:27017")
    monkeypatch.setenv("ALIYUN_API_KEY", "sk-original")
    monkeypatch.setenv("LIBLIBAI_ACCESS_KEY", "ak")
    monkeypatch.setenv("LIBLIBAI_SECRET_KEY", "sk")
    monkeypatch.setenv("RABBITMQ_URL", "amqp://u:p@mq.example/")
    settings = Settings()
    assert settings.mongodb_url.get_secret_value() == "mongodb://db.example:27017"
    assert settings.amqp_url.get_secret_value() == "amqp://u:p@mq.example/"
    aliyun, liblib = AliyunSettings(), LiblibSettings()
    assert aliyun.api_key is not None and aliyun.api_key.get_secret_value() == "sk-original"
    assert liblib.access_key is not None and liblib.access_key.get_secret_value() == "ak"
    assert liblib.secret_key is not None and liblib.secret_key.get_secret_value() == "sk"


def test_provider_prefixed_names_win_over_the_original(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ALIYUN_API_KEY", "sk-original")
    monkeypatch.setenv("IMAGED_ALIYUN_API_KEY", "sk-prefixed")
    monkeypatch.setenv("IMAGED_ALIYUN_MAX_IN_FLIGHT", "7")
    aliyun = AliyunSettings()
    assert aliyun.api_key is not None and aliyun.api_key.get_secret_value() == "sk-prefixed"
    assert aliyun.max_in_flight == 7


def test_invalid_provider_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMAGED_LIBLIBAI_MAX_IN_FLIGHT", "zero")
    with pytest.raises(ConfigError, match="IMAGED_LIBLIBAI_MAX_IN_FLIGHT"):
        LiblibProvider.load_settings()


def test_prefixed_names_win(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMAGED_AMQP_PREFIX", "other")
    monkeypatch.setenv("IMAGED_HTTP_PORT", "9001")
    settings = Settings()
    assert settings.amqp_prefix == "other" and settings.http_port == 9001


def test_secrets_do_not_show_in_repr(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMAGED_ALIYUN_API_KEY", "sk-very-secret")
    monkeypatch.setenv("IMAGED_AMQP_URL", "amqp://user:hunter2@127.0.0.1/")
    text = (
        repr(Settings())
        + str(Settings().model_dump())
        + repr(AliyunSettings())
        + str(AliyunSettings().public())
    )
    assert "sk-very-secret" not in text and "hunter2" not in text


def test_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("IMAGED_MONGODB_DB=fromdotenv\n")
    monkeypatch.chdir(tmp_path)
    assert Settings().mongodb_db == "fromdotenv"


def test_env_example_documents_every_setting() -> None:
    text = (Path(__file__).parents[2] / ".env.example").read_text(encoding="utf-8")
    names = [f"IMAGED_{name.upper()}" for name in Settings.model_fields]
    for model in (AliyunProvider.settings_model, LiblibProvider.settings_model, S3Settings, WebhookSettings):
        prefix = str(model.model_config.get("env_prefix"))
        names += [f"{prefix}{name.upper()}" for name in model.model_fields]
    missing = [name for name in names if f"{name}=" not in text]  # commented or not
    assert not missing, f".env.example lacks {missing}"
