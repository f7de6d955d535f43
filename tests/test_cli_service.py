"""The service-API commands of `whispr` against a running node (contract.md §7)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from tests.node import running_node
from whispr.cli import main

pytestmark = pytest.mark.integration


async def test_service_commands_drive_a_running_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WHISPR_API_KEY", "test-api-key")
    async with running_node(tmp_path) as running:
        url = ["--url", running.http_url]

        async def run(*argv: str) -> tuple[int, str, str]:
            code = await trio.to_thread.run_sync(main, [*argv, *url])
            out, err = capsys.readouterr()
            return code, out.strip(), err.strip()

        code, out, _ = await run("conversation", "create", "alice", "bob")
        assert code == 0
        conversation = json.loads(out)["id"]
        assert (await run("conversation", "add-member", conversation, "carol"))[0] == 0
        code, out, _ = await run("message", conversation, "hello", "--sender", "alice", "--client-message-id", "c1")
        assert (code, json.loads(out)["seq"], json.loads(out)["duplicate"]) == (0, 1, False)
        code, out, _ = await run("message", conversation, "maintenance at noon")  # as the system
        assert (code, json.loads(out)["seq"]) == (0, 2)
        assert (await run("notify", "bob", "--type", "mention", "--title", "hi"))[0] == 0
        assert await run("disconnect", "bob") == (0, '{"disconnected": 0}', "")
        assert await run("connections") == (0, '{"connections": []}', "")
        code, _, err = await run("message", "no-such-conversation", "hi")  # as the system
        assert code == 1
        assert json.loads(err) == {"error": "conversation_not_found"}
        assert (await run("conversation", "remove-member", conversation, "carol"))[0] == 0
        assert (await run("conversation", "add-member", conversation, "carol"))[0] == 0
        assert running.node.store is not None
        assert sorted(await running.node.store.members(conversation)) == ["alice", "bob", "carol"]

    code = await trio.to_thread.run_sync(main, ["connections", *url])
    assert code == 1
    assert "cannot reach the node" in capsys.readouterr().err
