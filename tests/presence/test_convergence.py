"""The key property: a phoenix.js client that follows the broadcasts sees exactly `list(topic)`.

Random sequences of track / update / untrack / untrack_all / time steps run against a real
`PresenceTracker` on Trio's virtual clock. Each topic has clients modelled on presence.js
(tests/presence/presence_js.py): one that joined before anything happened, and late ones that join
mid-run (their `presence_state` is `list(topic)` at that moment, then they follow the diffs, the
order a Phoenix channel gives: `presence_state` pushed after the join, broadcasts from then on).
At every `presence_diff` (a flush point) each client of the topic must equal `list(topic)`.

`test_model_matches_real_presence_js` feeds a recorded run into the real presence.js under Node,
so the model itself is checked against the client it stands for.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.presence.presence_js import State, by_ref, sync_diff, sync_state
from whispr.presence import AlreadyTracked, NotTracked, PresenceTracker

JS_DIR = Path(__file__).resolve().parent.parent / "js"
GRACE = 5.0
WINDOW = 0.05
TOPICS = ("conversation:1", "conversation:2")
USERS = ("1", "2", "10")
DEVICES = ("phone", "laptop")

topics = st.sampled_from(TOPICS)
users = st.sampled_from(USERS)
devices = st.sampled_from(DEVICES)
operations = st.one_of(
    st.tuples(st.just("track"), topics, users, devices, st.integers(0, 3)),
    st.tuples(st.just("update"), topics, users, devices, st.integers(0, 3)),
    st.tuples(st.just("untrack"), topics, users, devices),
    st.tuples(st.just("untrack_all"), users, devices),
    st.tuples(st.just("sleep"), st.sampled_from([0.0, 0.01, WINDOW / 2, WINDOW, 0.2, GRACE / 2, GRACE, GRACE + 1])),
    st.tuples(st.just("join_late"), topics),
)


@dataclass
class Client:
    """A presence.js instance on one topic."""

    state: State
    exact: bool  # joined before anything happened, so even the order of metas must match


@dataclass
class Run:
    tracker: PresenceTracker = field(init=False)
    clients: dict[str, list[Client]] = field(default_factory=lambda: {t: [Client({}, exact=True)] for t in TOPICS})
    diffs: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {t: [] for t in TOPICS})

    def __post_init__(self) -> None:
        self.tracker = PresenceTracker(self.broadcast, node="node-a", grace_period=GRACE, coalesce_window=WINDOW)

    def broadcast(self, topic: str, event: str, payload: dict[str, Any]) -> None:
        assert event == "presence_diff"
        assert set(payload) == {"joins", "leaves"}
        assert payload["joins"] or payload["leaves"]  # an empty window sends nothing
        self.diffs[topic].append(payload)
        server = self.tracker.list(topic)
        for client in self.clients[topic]:
            if client.exact:
                # Every join is news to the client; every leave names a meta it has or that this diff joins.
                known = by_ref(client.state)
                for key, presence in payload["joins"].items():
                    assert not {m["phx_ref"] for m in presence["metas"]} & set(known.get(key, {}))
                joined = by_ref(payload["joins"])
                for key, presence in payload["leaves"].items():
                    left = {m["phx_ref"] for m in presence["metas"]}
                    assert left <= set(known.get(key, {})) | set(joined.get(key, {}))
            client.state = sync_diff(client.state, payload)
            self.assert_converged(client, server)

    def join_late(self, topic: str) -> None:
        self.clients[topic].append(Client(sync_state({}, self.tracker.list(topic)), exact=False))

    @staticmethod
    def assert_converged(client: Client, server: State) -> None:
        if client.exact:
            assert client.state == server
        else:
            assert by_ref(client.state) == by_ref(server)

    async def apply(self, op: tuple[Any, ...]) -> None:
        name, *args = op
        if name == "sleep":
            await trio.sleep(args[0])
        elif name == "join_late":
            self.join_late(args[0])
        elif name == "untrack_all":
            user, device = args
            self.tracker.untrack_all(f"user_socket:{user}:{device}")
        else:
            topic, user, device, *rest = args
            tracking_id = f"user_socket:{user}:{device}"
            try:
                if name == "track":
                    self.tracker.track(topic, user, tracking_id, {"device_id": device, "online_at": rest[0]})
                elif name == "update":
                    self.tracker.update(topic, user, tracking_id, {"device_id": device, "online_at": rest[0]})
                else:
                    self.tracker.untrack(topic, user, tracking_id)
            except (AlreadyTracked, NotTracked):
                pass  # refused before any change; the property still has to hold

    async def play(self, ops: list[tuple[Any, ...]]) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.tracker.run)
            for op in ops:
                await self.apply(op)
            await trio.sleep(GRACE + WINDOW + 1)  # every held leave and window runs out
            stats = self.tracker.statistics()
            assert (stats.pending_leaves, stats.pending_diffs) == (0, 0)
            for topic in TOPICS:
                for client in self.clients[topic]:
                    self.assert_converged(client, self.tracker.list(topic))
            nursery.cancel_scope.cancel()


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.lists(operations, max_size=60))
def test_clients_converge_to_the_server_at_every_flush(ops: list[tuple[Any, ...]]) -> None:
    trio.run(Run().play, ops, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_reconnect_storm_inside_the_grace_period_is_silent() -> None:
    run = Run()
    setup = [("track", "conversation:1", user, device, 0) for user in USERS for device in DEVICES]
    storm: list[tuple[Any, ...]] = [("sleep", 1.0)]
    for _ in range(3):
        storm += [("untrack_all", user, device) for user in USERS for device in DEVICES]
        storm.append(("sleep", GRACE / 2))
        storm += setup
    trio.run(run.play, [*setup, *storm], clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(run.diffs["conversation:1"]) == 1  # the initial joins, nothing after


def random_op(rng: random.Random) -> tuple[Any, ...]:
    """One operation of `operations`, drawn with `random` (Hypothesis strategies are not for plain tests)."""
    name = rng.choice(["track", "track", "update", "update", "untrack", "untrack_all", "sleep", "sleep", "join_late"])
    user, device = rng.choice(USERS), rng.choice(DEVICES)
    if name == "sleep":
        return (name, rng.choice([0.0, WINDOW / 2, WINDOW, GRACE / 2, GRACE + 1]))
    if name == "untrack_all":
        return (name, user, device)
    if name == "join_late":
        return (name, TOPICS[0])
    if name == "untrack":
        return (name, TOPICS[0], user, device)
    return (name, TOPICS[0], user, device, rng.randrange(4))


NODE_REPLAY = """
const {Presence} = require("phoenix")
const {diffs} = JSON.parse(require("fs").readFileSync(0, "utf8"))
let state = {}
process.stdout.write(JSON.stringify(diffs.map(diff => JSON.parse(JSON.stringify(state = Presence.syncDiff(state, diff))))))
"""


@pytest.mark.integration
@pytest.mark.slow
def test_model_matches_real_presence_js() -> None:
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules" / "phoenix").is_dir():
        pytest.fail("node and tests/js/node_modules are required (bash .ci/setup --dev)")
    rng = random.Random(23)
    run = Run()
    trio.run(run.play, [random_op(rng) for _ in range(400)], clock=trio.testing.MockClock(autojump_threshold=0))
    diffs = run.diffs[TOPICS[0]]
    assert len(diffs) > 20
    # The run covers a diff that joins and leaves one meta (a join a late client saw, see Diff.seen).
    assert any(
        set(by_ref(diff["joins"]).get(key, {})) & set(metas)
        for diff in diffs
        for key, metas in by_ref(diff["leaves"]).items()
    )

    proc = subprocess.run(
        [node, "-e", NODE_REPLAY],
        input=json.dumps({"diffs": diffs}),
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    model: State = {}
    for diff, real in zip(diffs, json.loads(proc.stdout), strict=True):
        model = sync_diff(model, diff)
        assert model == real  # same keys, and the same metas in the same order
