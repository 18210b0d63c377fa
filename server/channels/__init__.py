"""Outbound channels: one adapter per platform behind a factory, and their formatting."""
