"""Models: aliases (the embedded SmolLM2, a tiny random model for tests), local directories, GGUF files."""

from tunesmith.models.load import load_model, load_tokenizer, select_device
from tunesmith.models.registry import ALIASES, resolve_model_dir, tunesmith_home

__all__ = ["ALIASES", "load_model", "load_tokenizer", "resolve_model_dir", "select_device", "tunesmith_home"]
