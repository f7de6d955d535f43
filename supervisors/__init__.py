"""OTP supervision on Trio nurseries. Imports only trio and the standard library.

This docstring is the specification, as OTP's ``supervisor`` moduledoc is.

Children
--------
A child is ``ChildSpec(id, start, args=(), restart=Restart.PERMANENT, shutdown=5.0)`` where ``start``
is ``async def start(*args, task_status)``. The child counts as *started* when it calls
``task_status.started(value)``, i.e. once it can serve (OTP ``start_link`` returning ``{ok, Pid}``).
Specs are validated when built; a bad one raises ``InvalidChildSpec(reason, value)``.

Supervisor
----------
``Supervisor(name, children, strategy=ONE_FOR_ONE, intensity=1, period=5.0)``; ``await sup.run()``.

- **Start order**: left to right, one at a time (``await nursery.start``). A child that raises or
  returns before ``started()`` stops the boot: the children already started are stopped right to
  left and ``run()`` raises ``StartError`` naming it. ``run()`` calls ``task_status.started(sup)``
  once every child has started, so supervisors nest (``sup.child_spec()``).
- **Stop order**: right to left, each child by its shutdown policy.
- **Exit reasons**: a return or ``raise ShutdownRequested`` is *normal*; any other exception is
  *abnormal*; a child the supervisor cancelled was *killed*.
- **Restart types** (OTP ``do_restart/4``): ``PERMANENT`` is restarted after any exit (reported as
  ``child_terminated``). ``TRANSIENT`` is restarted after an abnormal exit only; after a normal one
  it stays stopped and nothing is reported. ``TEMPORARY`` is never restarted; an abnormal exit is
  reported, and its spec is forgotten.
- **Strategies**: ``ONE_FOR_ONE`` restarts the child; ``REST_FOR_ONE`` stops the children after it
  (right to left) and restarts it and them (left to right); ``ONE_FOR_ALL`` does that for every
  child. ``TEMPORARY`` siblings stopped this way are not restarted.
- **Intensity** (OTP ``add_restart/1``): every restart is recorded per supervisor; more than
  ``intensity`` restarts within ``period`` seconds (default 1 in 5 s, OTP's) and the supervisor stops
  all its children right to left and raises ``MaxIntensityReached`` naming the offending child: a
  parent supervisor sees a crashed child, which is the escalation. A restart whose start fails is
  reported as ``start_error`` and tried again, counting as another restart.

Shutdown policies
-----------------
``shutdown`` is seconds of grace (default 5.0), ``Shutdown.BRUTAL_KILL`` or ``Shutdown.INFINITY``.
A child opts in to graceful shutdown with ``stop = trap_shutdown()`` (OTP ``trap_exit``): when
stopped, ``stop`` is set and the child gets its grace (or unlimited time with ``INFINITY``) to exit,
then it is cancelled. A child that does not trap, or has ``BRUTAL_KILL``, is cancelled at once. A
supervisor traps for itself, so a nested supervisor stops its own children in order. Use
``INFINITY`` for supervisors (``child_spec()`` does), as OTP does. Trio cannot kill a task that
shields itself from cancellation; such a child blocks its supervisor.

DynamicSupervisor
-----------------
``DynamicSupervisor(name, template, max_children=None, intensity=1, period=5.0)`` starts children
of one shape at run time: ``await dyn.start_child(id, *args)`` waits until the child is ready and
returns its ``started()`` value; ``dyn.start_child_nowait(id, *args)`` does not wait. Each child
costs one task and one record. Children are restarted one for one; on stop they are all asked at
once and share the template's grace.

Reports and introspection
-------------------------
Reports go to logger ``supervisors`` (see ``supervisors.reports``) and to listeners added with
``add_report_listener``. ``which_children()``, ``count_children()`` and ``format_tree(root)``
show the tree. ``run_tree(root, grace)`` runs a tree until SIGTERM or SIGINT and stops it in
order within ``grace`` seconds.
"""

from ._child import trap_shutdown
from .dynamic import DynamicSupervisor
from .errors import MaxChildrenReached, MaxIntensityReached, ShutdownRequested, StartError
from .intensity import RestartIntensity
from .reports import Offender, Report, ReportListener, add_report_listener, remove_report_listener
from .shutdown import run_tree
from .spec import (
    ChildSpec,
    InvalidChildSpec,
    InvalidSupervisorFlags,
    Restart,
    Shutdown,
    ShutdownPolicy,
    Strategy,
    SupervisorFlags,
)
from .supervisor import Supervisor
from .tree import ChildCounts, ChildInfo, format_tree

__all__ = [
    "ChildCounts",
    "ChildInfo",
    "ChildSpec",
    "DynamicSupervisor",
    "InvalidChildSpec",
    "InvalidSupervisorFlags",
    "MaxChildrenReached",
    "MaxIntensityReached",
    "Offender",
    "Report",
    "ReportListener",
    "Restart",
    "RestartIntensity",
    "Shutdown",
    "ShutdownPolicy",
    "ShutdownRequested",
    "StartError",
    "Strategy",
    "Supervisor",
    "SupervisorFlags",
    "add_report_listener",
    "format_tree",
    "remove_report_listener",
    "run_tree",
    "trap_shutdown",
]
