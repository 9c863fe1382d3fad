"""Plugins: the API submissions implement (api), the submission.toml schema (manifest),
validation (validate) and intake (submit)."""
