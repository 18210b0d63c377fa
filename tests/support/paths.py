"""Where the repository and its example files are."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_TENANTS = REPO_ROOT / "config" / "tenants.example.yaml"
