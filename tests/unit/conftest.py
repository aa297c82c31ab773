"""Fixtures of the unit tests that are shared by several modules (their home: tests/support)."""

from tests.support.api import make_client

__all__ = ["make_client"]
