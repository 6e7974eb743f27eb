"""Settings from the environment (``DEFECTWATCH_*``); only the service layer reads them.

``DEFECTWATCH_DB`` (a URL or a SQLite file path), ``DEFECTWATCH_INSTRUMENT`` (the microscope
scans are recorded for; default the host name), ``DEFECTWATCH_MODELS_DIR`` and
``DEFECTWATCH_SAMPLE_RULE`` (``folder`` | ``regex:<pattern with (?P<sample>...)>`` |
``comment``), ``DEFECTWATCH_CPU_BF16`` (``0`` | ``1``: CPU fast mode in bf16 or not; unset:
where the CPU computes bf16 natively). Lower layers are handed plain values. Tests call
``get_settings.cache_clear()`` after changing the environment.
"""

from __future__ import annotations

import re
import socket
from functools import lru_cache
from pathlib import Path

from platformdirs import user_cache_dir, user_data_dir
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from defectwatch.errors import ConfigError

APP = "defectwatch"


def data_dir() -> Path:
    """The user's data directory for defectwatch (platform-specific)."""
    return Path(user_data_dir(APP, appauthor=False))


def cache_dir() -> Path:
    """The user's cache directory for defectwatch (safe to delete: rebuilt when needed)."""
    return Path(user_cache_dir(APP, appauthor=False))


def default_db_url() -> str:
    """The default database: one SQLite file in the user's data directory."""
    return f"sqlite:///{data_dir() / 'defectwatch.db'}"


def check_sample_rule(rule: str) -> str:
    """Return ``rule`` if it is usable, else raise ConfigError saying what to write."""
    if rule in ("folder", "comment"):
        return rule
    if rule.startswith("regex:"):
        pattern = rule[len("regex:") :]
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"sample rule {rule!r}: bad regular expression ({exc})") from None
        if "sample" not in compiled.groupindex:
            raise ConfigError(f"sample rule {rule!r}: the pattern needs a (?P<sample>...) group")
        return rule
    raise ConfigError(
        f"sample rule {rule!r}: use folder, comment or regex:<pattern with (?P<sample>...)>"
    )


class Settings(BaseSettings):
    """What a user can configure through ``DEFECTWATCH_*`` variables (or a ``.env`` file)."""

    model_config = SettingsConfigDict(env_prefix="DEFECTWATCH_", env_file=None, extra="ignore")

    db: str = Field(default_factory=default_db_url)
    models_dir: Path = Field(default_factory=lambda: data_dir() / "models")
    sample_rule: str = "folder"
    instrument: str | None = None  # the microscope scans are recorded for (default: host name)
    cpu_bf16: bool | None = None  # CPU fast mode in bf16 (unset: where the CPU has it natively)
    # CPU exact mode in ONNX Runtime float32: slower than torch's fused forward at every size
    # measured (README, Speed), so off by default
    cpu_onnx: bool = False

    @field_validator("sample_rule")
    @classmethod
    def _rule(cls, value: str) -> str:
        try:
            return check_sample_rule(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


@lru_cache
def get_settings() -> Settings:
    """The settings, read once from the environment (ConfigError when a value is unusable)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"DEFECTWATCH_{'_'.join(map(str, e['loc'])).upper()}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise ConfigError(problems) from None


def default_instrument() -> str:
    """The instrument scans are recorded for when ``--instrument`` is not given:
    ``DEFECTWATCH_INSTRUMENT``, else this machine's host name."""
    return check_instrument(get_settings().instrument or socket.gethostname())


def check_instrument(name: str) -> str:
    """``name`` stripped; ConfigError when it is empty or longer than 200 characters."""
    name = name.strip()
    if not name or len(name) > 200:
        raise ConfigError(
            f"instrument name {name!r}: give 1 to 200 characters (e.g. --instrument STM-1)"
        )
    return name
