"""Configuration: agent.toml plus job files, validated into frozen values (see loader and model)."""

from agent.config.durations import Interval, format_duration, parse_duration, parse_interval
from agent.config.loader import ConfigError, default_config_path, load_config
from agent.config.model import JOB_TYPES, CollectorSettings, Config, Job, Retention

__all__ = [
    "JOB_TYPES", "CollectorSettings", "Config", "ConfigError", "Interval", "Job", "Retention",
    "default_config_path", "format_duration", "load_config", "parse_duration", "parse_interval",
]
