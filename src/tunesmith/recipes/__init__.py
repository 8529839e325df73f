"""Recipes: one file per training method, each reading top to bottom: setup -> loop -> save."""
