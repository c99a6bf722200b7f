"""Tiny config-built models for the target tests (the compress tests' builders, no downloads)."""

from tests.compress.conftest import tiny_bert, tiny_llama  # noqa: F401
