"""Losses: small pure functions, tensors in, tensors out, the formula in each docstring."""
