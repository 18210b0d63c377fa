"""docs/chatctl.md's command reference is the commands' own help, as they are now; and the
export's atomic write."""

from __future__ import annotations

from pathlib import Path

import pytest

from chat_client.cli.commands.export import atomic_file
from chat_client.cli.reference import rewrite
from tests.support.paths import REPO_ROOT


def test_the_reference_in_docs_is_up_to_date() -> None:
    document = (REPO_ROOT / "docs" / "chatctl.md").read_text(encoding="utf-8")
    assert rewrite(document) == document, (
        "docs/chatctl.md is stale: run .venv/bin/python -m chat_client.cli.reference"
    )
    for command in ("chatctl conversations tail", "chatctl deliveries retry", "chatctl token mint"):
        assert f"### `{command}`" in document


def test_an_interrupted_write_leaves_the_previous_file_and_nothing_else(tmp_path: Path) -> None:
    final = tmp_path / "export.jsonl"
    final.write_bytes(b"the previous export\n")

    def interrupted() -> None:
        with atomic_file(final) as sink:
            sink.write(b'{"half": ')
            raise ConnectionError("the stream broke")

    with pytest.raises(ConnectionError):
        interrupted()
    assert final.read_bytes() == b"the previous export\n"
    assert [p.name for p in tmp_path.iterdir()] == ["export.jsonl"]

    with atomic_file(final) as sink:
        sink.write(b"the new export\n")
    assert final.read_bytes() == b"the new export\n"
    assert [p.name for p in tmp_path.iterdir()] == ["export.jsonl"]
