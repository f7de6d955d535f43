"""Load scenarios for whispr (python -m loadtest).

    python -m loadtest connect --url ws://127.0.0.1:4000/socket --token JWT -n 2000 --rate 400 --procs 2
    python -m loadtest hold    -n 10000 --procs 2 --rate 1000 --duration 30 --server-pid PID --token JWT
    python -m loadtest fanout  -n 2000 --topic room:lobby --event shout --count 50 --msg-rate 5 --server-pid PID
    python -m loadtest fanout  -n 2000 --trigger-url http://127.0.0.1:4000/api/v1/... --trigger-body '{...{marker}...}'
    python -m loadtest rtt     -n 50 --event ping --duration 10 --server-pid PID
    python -m loadtest --compare before.jsonl after.jsonl

Layout: `cli` (arguments) → `runner` (parent: starts `--procs` worker processes, runs the phases, publishes,
reads the server's /proc) → `worker` (one Trio task per connection on `wsclient`, a minimal client-side
WebSocket) → `stats` (mergeable latency histograms) → `report` (JSON lines, table, --compare, --plot).

Not yet written: the `chat` scenario (many users exchanging messages on conversation topics with the
Whispr events of contract.md §3: send_message acks, new_message fan-in/out, typing) and the `reconnect`
scenario (a reconnect storm after a server drop/drain, measuring time to rejoin and the gap-free
catch-up of contract.md §4). Both need the gateway's real topics and API; they come with it.
"""
