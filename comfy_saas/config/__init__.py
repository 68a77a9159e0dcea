"""Configuration: service settings from the environment, and the deployment's shape from deploy.toml."""

from comfy_saas.config.settings import (
    ClientConfig,
    ComfyUISource,
    Limits,
    ModelCacheConfig,
    R2Config,
    Settings,
    TwinConfig,
)

__all__ = ["ClientConfig", "ComfyUISource", "Limits", "ModelCacheConfig", "R2Config", "Settings", "TwinConfig"]
