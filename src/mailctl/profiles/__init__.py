"""Profiles: the model and its validation, the TOML store, inheritance and provider presets."""
