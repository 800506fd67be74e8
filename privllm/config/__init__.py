"""Configuration: built-in profile < TOML file < PRIVLLM_* environment, validated before anything starts."""

from .load import ConfigError, load_config
from .schema import Config

__all__ = ["Config", "ConfigError", "load_config"]
