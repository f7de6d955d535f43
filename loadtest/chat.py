"""The `chat` and `reconnect` scenarios: users talking in conversations with the Whispr events (contract.md §2-§4).

Layout: connection i is user `cfg.user_for(i)` with device `cfg.device_for(i)` (a per-user HS256 token),
joined to `user:<user>` and `conversation:<conv>`, where connections i // group_size share one
conversation (`python -m loadtest.seed` creates the users and conversations and writes the groups file).
A worker process always holds whole conversations, so every check below is local to one process.

chat: after `go`, the worker sends `send_message {client_message_id, content}` at its share of the
aggregate `--msg-rate` for `--duration` seconds, round-robin over its members in a shuffled order (each
user sends at msg_rate / N per second: stay under the node's 100 per minute per user). Content and
client_message_id carry a marker `lt:<sender>:<n>:<send time ns>`. Measured: the ack (`ok
{message_id, seq, duplicate}`) latency; the delivery latency of `new_message` on every member's
`conversation:` topic (per delivery, and per message until its last member got it); lost (an acked
message some joined member never got on its conversation topic), duplicates (a member got the same
message twice on that topic), seq gaps, and the `user:` deliveries.

reconnect: after `go`, in every conversation the first `drop_fraction` of the members close their
sockets (a TCP close with no WebSocket close, like a dropped network); the others send for
`--duration` seconds (the outage) at `--msg-rate`. Then the dropped members reconnect at `--rate`
per second (a storm), joining with `{"last_seq": n}`: the last conversation seq and the last inbox seq
they had seen. A member is caught up when it has every conversation seq acked during the outage (the
replay) and as many `user:` deliveries past its inbox position. Measured: time from the storm's start
until each member rejoined and caught up (p50/p99/max: max = all), missing and duplicate seqs.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
import time
from typing import Any

import trio

from loadtest.worker import JoinRefused, Worker
from loadtest.wsclient import ConnectionClosed, HandshakeError, WsClient

# [join_ref, ref, "topic", "event", ...  (the node writes compact JSON)
HEAD = re.compile(rb'\[(?:null|"[^"]*"),(null|"[^"]*"),"([^"]*)","([^"]*)",')
CONTENT_MARKER = re.compile(rb'"content":"lt:(\d+):(\d+):(\d+)"')
SEQ = re.compile(rb'[{,]"seq":(\d+)')
INBOX_SEQ = re.compile(rb'"inbox_seq":(\d+)')
CHECK_EVERY = 0.05


class Sent:
    """One send_message: who sent it, when, its ack, and which members got it on the conversation topic."""

    __slots__ = ("acked", "conv", "expected", "got", "members", "seq", "t_ns")

    def __init__(self, conv: int, t_ns: int, members: frozenset[int]) -> None:
        self.conv = conv
        self.t_ns = t_ns
        self.members = members  # the members online when it was sent: each must get it live
        self.expected = len(members)
        self.got: set[int] = set()
        self.acked = False
        self.seq = -1


class Member:
    __slots__ = (
        "caught",
        "conv",
        "conv_seq",
        "dropped",
        "i",
        "inbox_seq",
        "n",
        "need_conv",
        "need_user",
        "pending",
        "ref",
        "scope",
        "ws",
    )

    def __init__(self, i: int, conv: int, ws: WsClient) -> None:
        self.i = i
        self.conv = conv
        self.ws: WsClient | None = ws
        self.conv_seq = -1  # the last conversation seq seen (join reply head, then new_message)
        self.inbox_seq = -1  # the last user: inbox seq seen
        self.pending: dict[bytes, tuple[int, int]] = {}  # ref → (n, send time ns)
        self.ref = 10
        self.n = 0
        self.dropped = False
        self.need_conv: set[int] = set()  # reconnect: outage seqs still to get
        self.need_user = 0  # reconnect: user: deliveries still to get
        self.caught = False
        self.scope = trio.CancelScope()


class ChatWorker(Worker):
    def __init__(self, cfg: Any, index: int, first: int, n: int) -> None:
        super().__init__(cfg, index, first, n)
        self.members: dict[int, Member] = {}
        self.sent: dict[tuple[int, int], Sent] = {}
        self.first_send_wall: float | None = None
        self.last_ack_wall: float | None = None
        self.storm_wall: float | None = None
        self.storm_t: float | None = None
        self.last_caught_wall: float | None = None
        self.outage_acked: dict[int, set[int]] = {}  # conv → seqs acked during the outage
        self.reconnecting = False
        self.rejoined = trio.Event()
        self.to_rejoin = 0

    async def ramp(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self.heartbeats)  # from the first connection on: the node closes idle sockets (4000)
        await super().ramp(nursery)

    def conv_index(self, i: int) -> int:
        return i // self.cfg.group_size

    # --- connections ---------------------------------------------------------------------------

    async def connection(self, i: int) -> None:
        self.stats["attempted"] += 1
        if self.ramp_first_wall is None:
            self.ramp_first_wall = time.time()
        replies: list[dict[str, Any]] = []
        early: list[bytes] = []
        try:
            try:
                ws, _, _ = await self.open(i, replies=replies, early=early)
            finally:
                self._tried()
        except Exception as exc:  # every failure is counted by kind
            self.failures[failure_kind(exc)] += 1
            return
        self.stats["joined"] += 1
        self.ramp_last_wall = time.time()
        m = Member(i, self.conv_index(i), ws)
        m.conv_seq = int(replies[1].get("last_seq", -1)) if len(replies) > 1 else -1
        self.members[i] = m
        self.live.add(ws)
        for raw in early:
            self.on_frame(m, raw)
        await self.member_loop(m)

    async def member_loop(self, m: Member) -> None:
        ws = m.ws
        assert ws is not None
        with m.scope:
            try:
                while True:
                    self.on_frame(m, await ws.recv())
            except (ConnectionClosed, OSError) as exc:
                if not m.dropped:
                    self.stats["dropped"] += 1
                    code = exc.code if isinstance(exc, ConnectionClosed) else f"os_{exc.errno}"
                    self.failures[f"dropped_{code}"] += 1
            finally:
                self.live.discard(ws)
                if ws.close_code is not None or m.dropped:
                    ws.abort()

    def on_frame(self, m: Member, msg: bytes) -> None:
        head = HEAD.match(msg)
        if head is None:
            self.stats["unparsed_frames"] += 1
            return
        event = head[3]
        if event == b"new_message":
            if head[2].startswith(b"conversation:"):
                self.on_conv_message(m, msg)
            else:
                self.on_user_message(m, msg)
        elif event == b"phx_reply":
            ref = head[1]
            if ref in m.pending:
                self.on_ack(m, m.pending.pop(ref), json.loads(msg)[4])
        else:
            self.stats["other_frames"] += 1

    def on_conv_message(self, m: Member, msg: bytes) -> None:
        now_ns = time.time_ns()
        self.stats["conv_deliveries"] += 1
        s = SEQ.search(msg)
        if s is not None:
            seq = int(s[1])
            if seq <= m.conv_seq:
                self.stats["conv_seq_repeated"] += 1
            else:
                if m.conv_seq >= 0 and seq > m.conv_seq + 1:
                    self.stats["conv_seq_gaps"] += 1
                m.conv_seq = seq
            if m.need_conv:
                m.need_conv.discard(seq)
                self.check_caught(m)
        mk = CONTENT_MARKER.search(msg)
        if mk is None:
            return
        rec = self.sent.get((int(mk[1]), int(mk[2])))
        if rec is None:
            self.stats["foreign_messages"] += 1
            return
        if m.i not in rec.members:  # sent while this member was offline: its replay (reconnect)
            self.stats["replayed"] += 1
            return
        if m.i in rec.got:
            self.stats["duplicates"] += 1
            return
        rec.got.add(m.i)
        lat_us = (now_ns - rec.t_ns) / 1000.0
        self.stats["received"] += 1
        self.h("delivery").add(lat_us)
        self.windows.add(now_ns / 1e9, lat_us)
        if len(rec.got) == rec.expected:
            self.h("delivery_all").add(lat_us)
        wall = now_ns / 1e9
        if self.first_event_wall is None:
            self.first_event_wall = wall
        self.last_event_wall = wall

    def on_user_message(self, m: Member, msg: bytes) -> None:
        self.stats["user_deliveries"] += 1
        s = INBOX_SEQ.search(msg)
        if s is not None:
            seq = int(s[1])
            if seq <= m.inbox_seq:
                self.stats["user_seq_repeated"] += 1
                return
            m.inbox_seq = seq
        if m.need_user > 0:
            m.need_user -= 1
            self.check_caught(m)

    def on_ack(self, m: Member, sent: tuple[int, int], reply: dict[str, Any]) -> None:
        now_ns = time.time_ns()
        rec = self.sent.get((m.i, sent[0]))
        self.stats["replies"] += 1
        if reply.get("status") != "ok":
            reason = (reply.get("response") or {}).get("reason", "error")
            self.stats[f"send_error_{reason}"] += 1
            self.stats["send_errors"] += 1
            return
        resp = reply.get("response") or {}
        self.stats["acked"] += 1
        if resp.get("duplicate"):
            self.stats["acked_duplicate"] += 1
        self.h("ack").add((now_ns - sent[1]) / 1000.0)
        self.last_ack_wall = now_ns / 1e9
        if rec is not None:
            rec.acked = True
            rec.seq = int(resp.get("seq", -1))
            if self.reconnecting is False and self.cfg.scenario == "reconnect":
                self.outage_acked.setdefault(m.conv, set()).add(rec.seq)

    # --- sending -------------------------------------------------------------------------------

    async def send(self, m: Member) -> None:
        ws = m.ws
        if ws is None or m.dropped:
            return
        m.n += 1
        m.ref += 1
        t_ns = time.time_ns()
        marker = f"lt:{m.i}:{m.n}:{t_ns}"
        ref = str(m.ref).encode()
        online = frozenset(k.i for k in self.group(m.conv) if not k.dropped and k.ws is not None)
        self.sent[(m.i, m.n)] = Sent(m.conv, t_ns, online)
        m.pending[b'"' + ref + b'"'] = (m.n, t_ns)
        topic = f"conversation:{self.cfg.conv_for(m.i)}"
        payload = f'{{"client_message_id":"{marker}","content":"{marker}"}}'
        frame = f'["2","{m.ref}","{topic}","send_message",{payload}]'.encode()
        self.stats["sent"] += 1
        if self.first_send_wall is None:
            self.first_send_wall = t_ns / 1e9
        try:
            await ws.send_text(frame)
        except OSError:
            self.stats["send_failed"] += 1

    def group(self, conv: int) -> list[Member]:
        g = self.cfg.group_size
        return [m for i in range(conv * g, conv * g + g) if (m := self.members.get(i)) is not None]

    async def send_for(self, senders: list[Member], seconds: float) -> None:
        """Send at this worker's share of --msg-rate, round-robin over `senders`, for `seconds`."""
        if not senders:
            return
        rate = self.cfg.msg_rate / self.cfg.procs
        order = list(senders)
        random.shuffle(order)
        t0 = trio.current_time()
        end = t0 + seconds
        k = 0
        while not self.stop.is_set():
            at = t0 + k / rate
            if at >= end:
                break
            await trio.sleep_until(at)
            await self.send(order[k % len(order)])
            k += 1

    async def heartbeats(self) -> None:
        """Phoenix heartbeats for every live member, spread over the interval."""
        interval = self.cfg.heartbeat
        ref = 0
        while True:
            members = list(self.members.values())
            if not members:
                await trio.sleep(min(interval, 1.0))
                continue
            step = interval / len(members)
            for m in members:
                await trio.sleep(step)
                if m.ws is not None and not m.dropped:
                    ref += 1
                    with contextlib.suppress(OSError):
                        await m.ws.send_text(b'[null,"h%d","phoenix","heartbeat",{}]' % ref)

    def outstanding(self) -> int:
        pending = sum(len(m.pending) for m in self.members.values() if not m.dropped)
        incomplete = sum(1 for r in self.sent.values() if r.acked and len(r.got) < r.expected)
        return pending + incomplete

    async def settle(self, within: float) -> None:
        with trio.move_on_after(within):
            while self.outstanding():  # noqa: ASYNC110 - polls counts that many tasks change
                await trio.sleep(CHECK_EVERY)

    # --- phases --------------------------------------------------------------------------------

    async def measured(self, nursery: trio.Nursery) -> None:
        if self.stop.is_set():
            return
        cfg = self.cfg
        members = sorted(self.members.values(), key=lambda m: m.i)
        if cfg.scenario == "chat":
            await self.send_for(members, cfg.duration)
            await self.settle(cfg.drain)
            return
        # reconnect: drop, outage traffic, storm
        per_group = math.floor(cfg.drop_fraction * cfg.group_size + 1e-9)
        dropped = [m for m in members if m.i % cfg.group_size < per_group]
        for m in dropped:
            m.dropped = True
            m.scope.cancel()
            if m.ws is not None:
                m.ws.abort()
                self.live.discard(m.ws)
                m.ws = None
        self.stats["dropped_on_purpose"] = len(dropped)
        await self.send_for([m for m in members if not m.dropped], cfg.duration)
        await self.settle(cfg.drain)
        for m in dropped:
            m.need_conv = {s for s in self.outage_acked.get(m.conv, ()) if s > m.conv_seq}
            m.need_user = len(m.need_conv)
        self.reconnecting = True
        self.storm_wall = time.time()
        self.storm_t = trio.current_time()
        self.to_rejoin = len(dropped)
        for m in dropped:  # nothing to catch up: caught up once rejoined
            m.caught = False
        if not dropped:
            return
        rate = (cfg.reconnect_rate or cfg.rate) / cfg.procs
        async with trio.open_nursery() as storm:
            for k, m in enumerate(dropped):
                await trio.sleep_until(self.storm_t + k / rate)
                storm.start_soon(self.rejoin, m, nursery)
        with trio.move_on_after(cfg.drain + cfg.connect_timeout):
            await self.rejoined.wait()

    async def rejoin(self, m: Member, nursery: trio.Nursery) -> None:
        user_params: dict[str, Any] = {"last_seq": m.inbox_seq} if m.inbox_seq >= 0 else {}
        conv_params: dict[str, Any] = {"last_seq": m.conv_seq} if m.conv_seq >= 0 else {}
        early: list[bytes] = []
        for attempt in range(3):
            try:
                ws, _, _ = await self.open(m.i, join_params=[user_params, conv_params], early=early, record=False)
                break
            except Exception as exc:  # counted by kind, retried like a client
                self.failures[f"rejoin_{failure_kind(exc)}"] += 1
                if attempt == 2:
                    self.to_rejoin -= 1
                    if self.to_rejoin == 0:
                        self.rejoined.set()
                    return
                await trio.sleep(0.5 * (attempt + 1))
        assert self.storm_t is not None
        self.h("rejoin").add((trio.current_time() - self.storm_t) * 1e6)
        self.stats["rejoined"] += 1
        m.ws, m.dropped, m.scope = ws, False, trio.CancelScope()
        self.live.add(ws)
        for raw in early:
            self.on_frame(m, raw)
        self.check_caught(m)
        nursery.start_soon(self.member_loop, m)

    def check_caught(self, m: Member) -> None:
        if m.caught or not self.reconnecting or m.ws is None or m.need_conv or m.need_user > 0:
            return
        m.caught = True
        assert self.storm_t is not None
        self.h("catchup").add((trio.current_time() - self.storm_t) * 1e6)
        self.stats["caught_up"] += 1
        self.last_caught_wall = time.time()
        self.to_rejoin -= 1
        if self.to_rejoin == 0:
            self.rejoined.set()

    # --- results -------------------------------------------------------------------------------

    def extra(self) -> dict[str, Any]:
        lost = sum(r.expected - len(r.got) for r in self.sent.values() if r.acked)
        unacked = sum(1 for m in self.members.values() for _ in m.pending)
        out: dict[str, Any] = {
            "lost": lost,
            "unacked": unacked,
            "first_send_wall": self.first_send_wall,
            "last_ack_wall": self.last_ack_wall,
        }
        if self.cfg.scenario == "reconnect":
            out.update(
                storm_wall=self.storm_wall,
                last_caught_wall=self.last_caught_wall,
                missing_conv=sum(len(m.need_conv) for m in self.members.values() if m.ws is not None),
                missing_user=sum(max(m.need_user, 0) for m in self.members.values() if m.ws is not None),
                not_rejoined=sum(1 for m in self.members.values() if m.ws is None),
            )
        return out


def failure_kind(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timeout"
    if isinstance(exc, HandshakeError):
        return f"http_{exc.status}" if exc.status else "handshake"
    if isinstance(exc, JoinRefused):
        return f"join_{exc}"
    if isinstance(exc, ConnectionClosed):
        return f"closed_{exc.code}"
    if isinstance(exc, OSError):
        return f"os_{exc.errno}"
    return type(exc).__name__
