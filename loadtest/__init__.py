"""Load scenarios for whispr (python -m loadtest).

    python -m loadtest connect --url ws://127.0.0.1:4000/socket --token JWT -n 2000 --rate 400 --procs 2
    python -m loadtest hold    -n 10000 --procs 2 --rate 1000 --duration 30 --server-pid PID --token JWT
    python -m loadtest fanout  -n 2000 --topic room:lobby --event shout --count 50 --msg-rate 5 --server-pid PID
    python -m loadtest fanout  -n 2000 --trigger-url http://127.0.0.1:4000/api/v1/... --trigger-body '{...{marker}...}'
    python -m loadtest rtt     -n 50 --event ping --duration 10 --server-pid PID
    python -m loadtest --compare before.jsonl after.jsonl

    python -m loadtest.seed --data-dir D -n 10000 --group-size 10 --user 'u{i}' --out D/groups.json   # before the node
    python -m loadtest chat      -n 10000 --secret-file D/dev-jwt-secret --groups-file D/groups.json --user 'u{i}' \
                                 --source-ips 2000 --rate 120 --msg-rate 300 --duration 20 --server-pid PID
    python -m loadtest reconnect -n 2000 --secret-file D/dev-jwt-secret --groups-file D/groups.json --user 'u{i}' \
                                 --drop-fraction 0.5 --reconnect-rate 2000 --msg-rate 100 --duration 5

Layout: `cli` (arguments) → `runner` (parent: starts `--procs` worker processes, runs the phases, publishes,
reads the server's /proc: CPU, RSS, run-queue wait) → `worker` (one Trio task per connection on `wsclient`, a
minimal client-side WebSocket; `chat` holds the chat/reconnect members) → `stats` (mergeable latency
histograms) → `report` (JSON lines, table, --compare, --plot). `seed` writes users and conversations into a
node's store (the only module that imports whispr).

Tokens: `--token` shares one token; `--token-secret`/`--secret-file` mint one HS256 token per connection
(sub = `--user`, device_id = `--device`, `{i}` = connection index, exp = now + `--token-ttl`), in the
worker processes (the secret reaches them by environment, never on a command line or in the results).
Source addresses: `--source-ips N --source-base B` spread connections over 127.0.0.1+B .. +B+N-1 (the node
allows 10 connections and 20 connects per 5 minutes per IP: shift B between runs on one node).
Measured results: loadtest/RESULTS.md.
"""
