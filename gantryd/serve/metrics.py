"""(to be written)"""
from __future__ import annotations

from .app import Routes, ServeContext


def register(routes: Routes, ctx: ServeContext) -> None:
    """Add this module's routes."""
