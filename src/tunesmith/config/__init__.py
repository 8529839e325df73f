"""Typed configuration: one schema drives YAML files, CLI flags and `--set key=value` overrides."""

from tunesmith.config.load import build_config, config_to_dict, leaf_fields
from tunesmith.config.schema import DataConfig, LoraConfig, SFTConfig, TrainConfig

__all__ = ["DataConfig", "LoraConfig", "SFTConfig", "TrainConfig", "build_config", "config_to_dict", "leaf_fields"]
