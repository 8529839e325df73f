"""Data: read and validate JSONL, render with the chat template, mask, pack, collate."""
