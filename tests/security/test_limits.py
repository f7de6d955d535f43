"""Limits on Trio's virtual clock: every limit crossed exactly at its boundary (contract §5)."""

from __future__ import annotations

import logging

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from whispr.security.limits import (
    ALLOWED,
    ConnectionSlots,
    Decision,
    FallbackLimiter,
    LimiterUnavailable,
    LimitsConfig,
    LocalLimiter,
    Rate,
    SlidingWindow,
    TokenBucket,
    content_too_large,
)

LIMITS = LimitsConfig()
MESSAGES = LIMITS.message_rate  # 100 per minute, token bucket
CONNECTS = LIMITS.connect_rate  # 20 per 5 minutes, sliding window
US = 1_000_000


async def hits(limiter: LocalLimiter, rate: Rate, subject: str, n: int) -> list[Decision]:
    return [await limiter.hit(rate, subject) for _ in range(n)]


async def sleep_until(t0: float, offset: float) -> None:
    await trio.sleep_until(t0 + offset)


# --- token bucket (messages: 100 per minute) ------------------------------------------------------


async def test_token_bucket_allows_exactly_the_burst_then_one_per_interval(autojump_clock: trio.abc.Clock) -> None:
    limiter = LocalLimiter()
    t0 = trio.current_time()
    assert await hits(limiter, MESSAGES, "alice", 100) == [ALLOWED] * 100  # exactly at the limit
    over = await limiter.hit(MESSAGES, "alice")  # one over
    assert (over.allowed, over.retry_after_ms) == (False, 600)  # 60 s / 100
    await sleep_until(t0, 0.599)
    assert not (await limiter.hit(MESSAGES, "alice")).allowed
    await sleep_until(t0, 0.6)
    assert await hits(limiter, MESSAGES, "alice", 2) == [ALLOWED, Decision(False, 0.6)]
    await sleep_until(t0, 60.6)  # a full minute idle refills the whole bucket, no more
    assert await hits(limiter, MESSAGES, "alice", 101) == [ALLOWED] * 100 + [Decision(False, 0.6)]


async def test_subjects_and_rates_have_separate_budgets(autojump_clock: trio.abc.Clock) -> None:
    limiter = LocalLimiter()
    await hits(limiter, MESSAGES, "alice", 100)
    assert not (await limiter.hit(MESSAGES, "alice")).allowed
    assert (await limiter.hit(MESSAGES, "bob")).allowed
    assert (await limiter.hit(Rate("other", 100, 60.0), "alice")).allowed


def test_token_bucket_on_plain_integers() -> None:
    bucket = TokenBucket(Rate("r", 3, 3.0))
    assert [bucket.hit(0).allowed for _ in range(4)] == [True, True, True, False]
    assert bucket.hit(999_999) == Decision(False, 1e-6)
    assert bucket.hit(US).allowed
    assert not bucket.idle(2 * US)
    assert bucket.idle(4 * US)


# --- sliding window (connects: 20 per 5 minutes; joins: 30 per minute) ----------------------------


async def test_sliding_window_is_exact_over_any_period(autojump_clock: trio.abc.Clock) -> None:
    limiter = LocalLimiter()
    t0 = trio.current_time()
    assert (await limiter.hit(CONNECTS, "ip")).allowed  # one at t0
    await sleep_until(t0, 100)
    assert await hits(limiter, CONNECTS, "ip", 19) == [ALLOWED] * 19  # 20 in the window: exactly at the limit
    assert await limiter.hit(CONNECTS, "ip") == Decision(False, 200.0)  # one over: until t0's hit leaves
    await sleep_until(t0, 299.999999)
    assert not (await limiter.hit(CONNECTS, "ip")).allowed
    await sleep_until(t0, 300)  # t0's hit is out of (now - 300, now]
    assert await hits(limiter, CONNECTS, "ip", 2) == [ALLOWED, Decision(False, 100.0)]


def test_sliding_window_does_not_record_refused_hits() -> None:
    window = SlidingWindow(Rate("r", 2, 10.0, "sliding_window"))
    assert [window.hit(0).allowed, window.hit(0).allowed] == [True, True]
    for t in range(1, 10):
        assert not window.hit(t * US).allowed
    assert window.hit(10 * US).allowed  # the two hits at 0 left the window (0, 10]
    assert window.idle(20 * US)


def test_join_rate_default_is_thirty_per_minute() -> None:
    window = SlidingWindow(LIMITS.join_rate)
    assert all(window.hit(0).allowed for _ in range(30))
    assert window.hit(0) == Decision(False, 60.0)
    assert window.hit(60 * US).allowed


def test_rate_validation() -> None:
    with pytest.raises(ValueError, match="limit >= 1"):
        Rate("r", 0, 1.0)
    with pytest.raises(ValueError, match="period > 0"):
        Rate("r", 1, 0.0)
    with pytest.raises(ValueError, match="identifier"):
        Rate("a:b", 1, 1.0)


# --- blocks and memory ---------------------------------------------------------------------------


async def test_block_lasts_exactly_its_period_and_only_lengthens(autojump_clock: trio.abc.Clock) -> None:
    limiter = LocalLimiter()
    t0 = trio.current_time()
    assert await limiter.blocked_for("ip:1.2.3.4") == 0.0
    await limiter.block("ip:1.2.3.4", 300)
    await limiter.block("ip:1.2.3.4", 10)  # a shorter block does not shorten it
    assert await limiter.blocked_for("ip:1.2.3.4") == 300.0
    await sleep_until(t0, 299)
    assert await limiter.blocked_for("ip:1.2.3.4") == pytest.approx(1.0)
    await sleep_until(t0, 300)
    assert await limiter.blocked_for("ip:1.2.3.4") == 0.0
    assert await limiter.blocked_for("ip:5.6.7.8") == 0.0


async def test_idle_keys_and_lapsed_blocks_are_forgotten(autojump_clock: trio.abc.Clock) -> None:
    limiter = LocalLimiter()
    for n in range(50):
        await limiter.hit(MESSAGES, f"user{n}")
    await limiter.block("user:x", 1)
    await trio.sleep(61)
    await limiter.hit(MESSAGES, "fresh")
    assert list(limiter._states) == [(MESSAGES, "fresh")]
    assert limiter._blocks == {}


# --- fallback (reliability S11) ------------------------------------------------------------------


class DownLimiter:
    """A shared limiter whose backend is down."""

    async def hit(self, rate: Rate, subject: str) -> Decision:
        raise LimiterUnavailable("down")

    async def block(self, subject: str, seconds: float) -> None:
        raise LimiterUnavailable("down")

    async def blocked_for(self, subject: str) -> float:
        raise LimiterUnavailable("down")


async def test_fallback_enforces_the_limit_locally_when_the_primary_is_down(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = FallbackLimiter(DownLimiter(), LocalLimiter())
    assert await hits(limiter, MESSAGES, "alice", 101) == [ALLOWED] * 100 + [Decision(False, 0.6)]  # type: ignore[arg-type]
    await limiter.block("user:alice", 300)
    assert await limiter.blocked_for("user:alice") == 300.0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "whispr.security"]
    assert warnings == ["shared limiter unavailable, enforcing limits per node: down"]  # once per outage


async def test_fallback_uses_the_primary_when_it_works(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="whispr.security")
    primary, local = LocalLimiter(), LocalLimiter()
    limiter = FallbackLimiter(primary, local)
    limiter._degraded = True  # as after an outage
    await hits(limiter, MESSAGES, "alice", 100)  # type: ignore[arg-type]
    assert not (await primary.hit(MESSAGES, "alice")).allowed
    assert (await local.hit(MESSAGES, "alice")).allowed
    await limiter.block("user:bob", 60)
    assert await primary.blocked_for("user:bob") == await local.blocked_for("user:bob") == 60.0
    assert [r.getMessage() for r in caplog.records] == ["shared limiter available again"]


# --- per-IP connection slots (10) ----------------------------------------------------------------


def test_connection_slots_cap_each_ip() -> None:
    slots = ConnectionSlots(LIMITS.connections_per_ip)
    assert all(slots.try_acquire("1.2.3.4") for _ in range(10))  # exactly at the cap
    assert not slots.try_acquire("1.2.3.4")  # one over
    assert slots.held("1.2.3.4") == 10
    assert slots.try_acquire("5.6.7.8")  # other IPs unaffected
    slots.release("1.2.3.4")
    assert slots.try_acquire("1.2.3.4")  # a close frees a slot
    for _ in range(10):
        slots.release("1.2.3.4")
    assert slots.held("1.2.3.4") == 0
    with pytest.raises(RuntimeError, match="no connection slot"):
        slots.release("1.2.3.4")


# --- message content size in UTF-8 bytes (10,000) ------------------------------------------------


@pytest.mark.parametrize(
    ("content", "too_large"),
    [
        ("a" * 10_000, False),  # exactly at the limit
        ("a" * 10_001, True),
        ("😀" * 2_500, False),  # 10,000 bytes
        ("😀" * 2_501, True),  # 10,004 bytes
        ("😀" * 10_000, True),  # 40,000 bytes, 10,000 characters (trio-websocket would pass it)
        ("€" * 3_333 + "a", False),  # 9,999 + 1
        ("€" * 3_333 + "ab", True),
        ("", False),
    ],
)
def test_content_size_counts_utf8_bytes(content: str, too_large: bool) -> None:
    assert content_too_large(content, LIMITS.max_content_bytes) is too_large


@given(st.text(), st.integers(min_value=0, max_value=64))
def test_content_size_matches_encoded_length(content: str, limit: int) -> None:
    assert content_too_large(content, limit) is (len(content.encode("utf-8", "surrogatepass")) > limit)
