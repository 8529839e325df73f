"""Adapters: LoRA/DoRA layers and the adapter file format come from PEFT; this wraps them."""
