"""The version of quill, written once here (pyproject.toml reads it without importing quill)."""

__version__ = "0.1.0"
