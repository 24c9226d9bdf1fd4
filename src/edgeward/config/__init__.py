"""Configuration: reading, validating (every problem at once) and splitting into per-service settings."""

from .problems import ConfigError, Problems

__all__ = ["ConfigError", "Problems"]
