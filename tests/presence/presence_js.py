"""A line-by-line Python model of phoenix.js 1.8.16 `Presence.syncState` / `Presence.syncDiff`.

Source: tests/js/node_modules/phoenix/assets/js/phoenix/presence.js. The model keeps the client's
quirks that matter for convergence: joins are applied before leaves, a joined key's known metas are
kept in front of the joined ones (`unshift`), metas are matched by `phx_ref` only, and a key whose
metas are all gone is deleted. `test_model_matches_real_presence_js` checks it against the real file.
"""

from __future__ import annotations

import copy
from typing import Any

State = dict[str, Any]


def sync_diff(state: State, diff: dict[str, Any]) -> State:
    """`Presence.syncDiff(state, diff)` without the callbacks; returns the new state (inputs untouched)."""
    state = copy.deepcopy(state)
    diff = copy.deepcopy(diff)  # `let {joins, leaves} = this.clone(diff)`
    for key, new_presence in diff["joins"].items():
        current = state.get(key)
        state[key] = copy.deepcopy(new_presence)
        if current is not None:
            joined_refs = [m["phx_ref"] for m in state[key]["metas"]]
            cur_metas = [m for m in current["metas"] if m["phx_ref"] not in joined_refs]
            state[key]["metas"][0:0] = cur_metas  # `state[key].metas.unshift(...curMetas)`
    for key, left_presence in diff["leaves"].items():
        current = state.get(key)
        if current is None:
            continue
        refs_to_remove = [m["phx_ref"] for m in left_presence["metas"]]
        current["metas"] = [m for m in current["metas"] if m["phx_ref"] not in refs_to_remove]
        if not current["metas"]:
            del state[key]
    return state


def sync_state(state: State, new_state: State) -> State:
    """`Presence.syncState(state, newState)` without the callbacks: what a (re)join's `presence_state` does."""
    joins: State = {}
    leaves: State = {}
    for key, presence in state.items():
        if key not in new_state:
            leaves[key] = presence
    for key, new_presence in new_state.items():
        current = state.get(key)
        if current is not None:
            new_refs = [m["phx_ref"] for m in new_presence["metas"]]
            cur_refs = [m["phx_ref"] for m in current["metas"]]
            joined = [m for m in new_presence["metas"] if m["phx_ref"] not in cur_refs]
            left = [m for m in current["metas"] if m["phx_ref"] not in new_refs]
            if joined:
                joins[key] = {**new_presence, "metas": joined}
            if left:
                leaves[key] = {**copy.deepcopy(current), "metas": left}
        else:
            joins[key] = new_presence
    return sync_diff(state, {"joins": joins, "leaves": leaves})


def by_ref(state: State) -> dict[str, dict[str, Any]]:
    """key -> phx_ref -> meta: the state with meta order ignored."""
    return {key: {m["phx_ref"]: m for m in presence["metas"]} for key, presence in state.items()}
