"""Circuit breakers around PostgreSQL, Redis and the external user service.

This docstring is the spec (contract.md §5; reliability.md D2, D8, D9); `breaker.py` has the
theory of operation and the invariants.

Use one `CircuitBreaker` per dependency and route every call to it through `await
breaker.call(fn, *args)`. When it raises `CircuitOpen`, the caller answers `service_unavailable`
(a join refusal or a push error; contract.md §2, §3) and may use `retry_after`.

The breakers of a node (the `breaker` label of `whispr_circuit_state` in /metrics):

| breaker | around | per-call timeout | while open |
|---|---|---|---|
| `postgres` | every PostgreSQL store call (`adapters/postgres_store.py`), once it holds one of the pool's connection slots (waiting for a slot is local overload, not counted) | 2 s | `StoreUnavailable`: sends and store-backed joins get `service_unavailable`, /ready fails its store check; sockets stay |
| `redis_pubsub` | publishing to Redis (`pubsub/cluster.py`) | 0.25 s | publications dropped; the receivers fill the gap from the store |
| `redis_limits` | the shared rate limiter (`security/limits.py` `FallbackLimiter`), once the call holds one of the client's connection slots (waiting for a slot is local overload, not counted) | 0.25 s | each node enforces the limits with its own budget |
| `user_service` | the external user directory (`security/user_service.py`) | its timeout | the cached answer, else a refused connect |

The SQLite store has no breaker: it is a local file, not a dependency that goes away and comes
back, and a breaker would add 12-17 µs of CPU to every call (a micro benchmark: 2-3 % of a SQLite
append's ~600 µs).

Defaults: `failure_threshold=5`, `reset_timeout=30.0`, `half_open_calls=3`,
`failure_types=(Exception,)`. `call_timeout` has no default: pass the dependency's per-call
timeout (reliability.md suggests 0.2 s for Redis, 2 s for PostgreSQL).

States:

| state | a call | leaves it when |
|---|---|---|
| CLOSED | runs `fn(*args)`, cut at `call_timeout` | `failure_threshold` consecutive failures → OPEN |
| OPEN | raises `CircuitOpen` at once; `fn` is not called | the first call ≥ `reset_timeout` s after opening → HALF_OPEN (lazily, by `trio.current_time()`; no timer task) |
| HALF_OPEN | runs as a trial if fewer than `half_open_calls` trials were admitted, else raises `CircuitOpen` | `half_open_calls` trials succeeded → CLOSED; any trial fails → OPEN, with a fresh `reset_timeout` |

Outcomes of a call:
- failure: `fn` raised one of `failure_types`, or ran past `call_timeout` (then `call` raises
  `trio.TooSlowError`). The time to open is therefore at most `failure_threshold × call_timeout`.
- success: `fn` returned, or raised an exception outside `failure_types` (an answer from the
  dependency, such as "not found"), which propagates unchanged.
- neither: the call was cancelled from outside (or raised a non-`Exception` `BaseException`).
  A HALF_OPEN trial cancelled this way frees its slot for another caller.
- Only calls admitted in the current state count: the late outcomes of calls that were already
  running when the breaker changed state are ignored. So a burst of concurrent timeouts opens the
  breaker once, and the states follow closed→open→half_open→closed once per outage.

The half-open rule: "3 half-open calls" means three trials must succeed before the breaker
closes, not just the first one, so a flapping dependency does not get the full load back on one
lucky probe. The trials may overlap; at most `half_open_calls` run at once.

Telemetry: CIRCUIT_STATE {} {breaker, state} on every transition (none at construction: a new
breaker is CLOSED), and DEPENDENCY_CALL {duration} {dependency, operation, outcome} for every call
that ran `fn` (`operation` = `call`'s `operation`, default `fn.__name__`; `outcome` ∈ ok, error, timeout, cancelled). Refused
calls emit no DEPENDENCY_CALL.
"""

from whispr.resilience.breaker import BreakerStatistics, CircuitBreaker, CircuitOpen, State

__all__ = ["BreakerStatistics", "CircuitBreaker", "CircuitOpen", "State"]
