"""Binary content (images, audio, resource blobs) is withheld with a clear note by default; an
upstream's ``binary`` setting lets chosen MIME types through, byte for byte (never tokenised).

Through the real gateway (Streamable HTTP, a real MCP client) with ``reference_server.py`` as a
real stdio upstream.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp.client.client import Client
from proxy.harness import serving

from veil.config import parse_config

from .reference_server import PNG, WAV

REFERENCE = Path(__file__).with_name("reference_server.py")
pytestmark = [pytest.mark.anyio, pytest.mark.req("protocol:binary-policy")]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def config(database_url: str, tmp_path: Path):
    def make(binary: Any = None):
        upstream: dict[str, Any] = {"command": sys.executable, "args": [str(REFERENCE)], "prefix": ""}
        if binary is not None:
            upstream["binary"] = binary
        return parse_config(
            {
                "upstreams": {"ref": upstream},
                "database_url": database_url,
                "data_dir": str(tmp_path / "data"),
                "auth": {"required": False},
                "expose": "direct",
            },
            source=tmp_path / "veil.yaml",
        )

    return make


async def _everything_binary(agent: Client) -> dict[str, Any]:
    image = (await agent.call_tool("test_image_content", {})).content[0]
    audio = (await agent.call_tool("test_audio_content", {})).content[0]
    blob = (await agent.read_resource("test://static-binary")).contents[0]
    mixed = (await agent.call_tool("test_multiple_content_types", {})).content
    return {"image": image, "audio": audio, "blob": blob, "mixed": mixed}


async def test_binary_is_withheld_with_a_note_by_default(config) -> None:
    async with serving(config()) as (_gw, url), Client(url, mode="legacy") as agent:
        got = await _everything_binary(agent)
    for kind, mime in (("image", "image/png"), ("audio", "audio/wav")):
        note = got[kind]
        assert isinstance(note, types.TextContent), kind
        assert f"Veil withheld {kind} content ({mime}" in note.text and "personal data" in note.text
    blob = got["blob"]
    assert isinstance(blob, types.TextResourceContents) and "withheld blob content (image/png" in blob.text
    assert [c.type for c in got["mixed"]] == ["text", "text", "resource"]  # the image became a note
    assert PNG not in str(got) and WAV not in str(got)


async def test_listed_mime_types_pass_byte_for_byte_and_others_are_withheld(config) -> None:
    async with serving(config(["image/*"])) as (_gw, url), Client(url, mode="legacy") as agent:
        got = await _everything_binary(agent)
    assert isinstance(got["image"], types.ImageContent) and got["image"].data == PNG
    assert got["image"].mime_type == "image/png"
    assert isinstance(got["blob"], types.BlobResourceContents) and got["blob"].blob == PNG
    assert isinstance(got["audio"], types.TextContent) and "withheld audio content" in got["audio"].text
    assert [c.type for c in got["mixed"]] == ["text", "image", "resource"]


async def test_binary_pass_lets_every_type_through(config) -> None:
    async with serving(config("pass")) as (_gw, url), Client(url, mode="legacy") as agent:
        got = await _everything_binary(agent)
    assert isinstance(got["audio"], types.AudioContent) and got["audio"].data == WAV
    assert isinstance(got["image"], types.ImageContent) and got["image"].data == PNG
