"""which_children, count_children and the tree dump an SRE prints."""

from __future__ import annotations

import trio
import trio.testing

from supervisors import ChildSpec, DynamicSupervisor, Restart, Strategy, Supervisor, format_tree

from .children import Fleet, idle


async def test_format_tree(nursery: trio.Nursery) -> None:
    fleet = Fleet()
    sockets = DynamicSupervisor("sockets", ChildSpec("connection", idle, restart=Restart.TEMPORARY), max_children=100)
    edge = Supervisor(
        "edge", [fleet.spec("pubsub"), fleet.spec("presence")], strategy=Strategy.ONE_FOR_ALL, intensity=3
    )
    root = Supervisor(
        "root",
        [
            fleet.spec("store"),
            edge.child_spec(),
            sockets.child_spec(),
            fleet.spec("endpoint", restart=Restart.TRANSIENT),
        ],
        strategy=Strategy.REST_FOR_ONE,
        intensity=2,
        period=10,
    )
    await nursery.start(root.run)
    await sockets.start_child(1)
    await sockets.start_child(2)
    fleet.exit("pubsub", "crash")
    fleet.exit("endpoint", "normal")
    await trio.testing.wait_all_tasks_blocked()
    assert format_tree(root) == "\n".join(
        [
            "Supervisor 'root' rest_for_one running, restarts 0 (0 in window, max 2 per 10s)",
            "├─ store  running  permanent  shutdown=5s  restarts=0",
            "├─ edge  running  permanent  shutdown=infinity  restarts=0"
            "  ── Supervisor 'edge' one_for_all running, restarts 1 (1 in window, max 3 per 5s)",
            "│  ├─ pubsub  running  permanent  shutdown=5s  restarts=1",
            "│  └─ presence  running  permanent  shutdown=5s  restarts=1",
            "├─ sockets  running  permanent  shutdown=infinity  restarts=0"
            "  ── DynamicSupervisor 'sockets' running, 2 'connection' children (max 100), restarts 0"
            " (0 in window, max 1 per 5s)",
            "└─ endpoint  not_running  transient  shutdown=5s  restarts=0",
        ]
    )
    counts = root.count_children()
    assert (counts.specs, counts.active, counts.supervisors, counts.workers) == (4, 3, 2, 1)
    assert [(c.id, c.status, c.value) for c in root.which_children()][:2] == [
        ("store", "running", "store"),
        ("edge", "running", edge),
    ]
