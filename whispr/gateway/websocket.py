"""One server WebSocket connection after the 101: the reader loop and the write path.

Theory of operation:
- One task per connection, the reader: it waits until the socket is readable, reads, parses
  frames with `FrameReader` and awaits the handler once per complete message, serially.
- Writes never switch tasks on the fast path: `send` calls the socket's non-blocking `send`
  while nothing is queued. Only what the kernel refuses goes to the bounded `Outbox`, and a
  writer task, started on demand in the endpoint's nursery, waits until the socket is writable
  and drains the outbox with one vectored `sendmsg` per wake-up; it ends when the outbox is empty
  and the fast path resumes. With TLS every write goes through the writer (`SSLStream.send_all`).

Rules (contract.md §1, §5, §6; RFC 6455):
- Over-cap messages close with 1009, invalid UTF-8 with 1007, other protocol errors (unmasked,
  RSV bits, bad opcodes, bad close frames) with 1002; see `whispr.gateway.rfc6455`.
- Control frames above `max_control_frames` per `control_window` seconds close with 1008 (a ping
  flood); below it, every ping is answered with a pong (§5.5.2).
- Nothing received for `idle_timeout` seconds closes with 4000 (deadlines: `whispr.gateway.deadlines`,
  one heap per endpoint, no cancel scope per read).
- A handler method that raises is logged (ERROR, logger `whispr.gateway`) and closes with 1011.
- An outbox overflow closes with 1013 after dropping everything not yet on the wire; a socket
  that accepts no byte for `write_timeout` seconds is aborted (TCP closed without a close frame).
- Closing (§7.1.2): the server sends its close frame, keeps reading (and discarding data) until
  the peer's close frame, EOF or `close_timeout`, then closes TCP first (§7.1.1). A peer's close
  is answered by echoing its code (§5.5.1); the transport itself never initiates 1000.
- `on_close` runs exactly once, after TCP is closed, whatever ended the connection, then
  `Accept.on_closed`; both are shielded from cancellation for at most `close_timeout`.

Invariants:
- `_outbox is not None` exactly while a writer task owns pending bytes; frames are written in
  `send` order because `send` queues behind a non-empty outbox.
- Only the reader task closes the socket; others abort by `notify_closing`, which wakes the
  reader and the writer out of their waits.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from dataclasses import dataclass

import trio

from whispr.gateway import rfc6455
from whispr.gateway.deadlines import Deadlines
from whispr.gateway.outbox import Outbox
from whispr.gateway.rfc6455 import FrameReader, ProtocolViolation
from whispr.gateway.transport import Accept, SocketHandler
from whispr.observability import telemetry

_log = logging.getLogger("whispr.gateway")

_OPEN = 0
_CLOSING = 1
_CLOSED = 2

_MAX_IOV = 512  # chunks per sendmsg; far below IOV_MAX (1024 on Linux)
_BROKEN = (trio.ClosedResourceError, trio.BrokenResourceError, OSError)
_ABNORMAL = 1006  # §7.1.5: closed without a close frame


@dataclass(frozen=True, slots=True)
class WebSocketLimits:
    """Per-route limits of a WebSocket connection (defaults from contract.md §5).

    Attributes:
        max_message_size: payload bytes of one message, across its fragments (over it: 1009).
        idle_timeout: seconds without any inbound frame before closing with 4000.
        close_timeout: seconds to wait for the peer's close frame and for our own to be written.
        write_timeout: seconds a pending write may wait for the socket before the connection is aborted.
        outbox_max_frames: frames queued behind the kernel before droppable ones are dropped / 1013.
        outbox_max_bytes: bytes queued behind the kernel, likewise.
        max_control_frames: ping/pong/close frames allowed per `control_window` (over it: 1008).
        control_window: seconds of the control-frame rate window.
        read_size: bytes asked of the kernel per read.
    """

    max_message_size: int = 64 * 1024
    idle_timeout: float = 90.0
    close_timeout: float = 5.0
    write_timeout: float = 30.0
    outbox_max_frames: int = 1000
    outbox_max_bytes: int = 1024 * 1024
    max_control_frames: int = 100
    control_window: float = 1.0
    read_size: int = 64 * 1024

    def __post_init__(self) -> None:
        for name in ("max_message_size", "outbox_max_frames", "outbox_max_bytes", "max_control_frames", "read_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"WebSocketLimits.{name} must be at least 1, got {getattr(self, name)!r}")
        for name in ("idle_timeout", "close_timeout", "write_timeout", "control_window"):
            if not getattr(self, name) > 0:
                raise ValueError(
                    f"WebSocketLimits.{name} must be a positive number of seconds, got {getattr(self, name)!r}"
                )


class WebSocketConnection:
    """The `Transport` of one upgraded connection; `run` drives it to the end."""

    __slots__ = (
        "_close_code",
        "_close_received",
        "_control_count",
        "_control_window_end",
        "_deadline",
        "_deadlines",
        "_drained",
        "_entry",
        "_half_close",
        "_limits",
        "_nursery",
        "_outbox",
        "_peer",
        "_reader",
        "_sock",
        "_state",
        "_stream",
    )

    def __init__(
        self,
        sock: socket.socket,
        peer: tuple[str, int],
        limits: WebSocketLimits,
        nursery: trio.Nursery,
        deadlines: Deadlines,
        stream: trio.SSLStream[trio.SocketStream] | None = None,
    ) -> None:
        """Wrap an upgraded non-blocking socket (and its TLS stream, for wss).

        `nursery` hosts the on-demand writer tasks; it must outlive the connection's `run`.
        `deadlines` enforces the idle and close timeouts; its `run` must be running meanwhile.
        """
        self._sock = sock
        self._stream = stream
        self._peer = peer
        self._limits = limits
        self._nursery = nursery
        self._reader = FrameReader(limits.max_message_size)
        self._state = _OPEN
        self._close_code = _ABNORMAL
        self._close_received = False
        # True after a protocol violation: the input is no longer parsed, so the peer's close
        # frame cannot be recognised; the write side is shut down once our close frame is out.
        self._half_close = False
        self._outbox: Outbox | None = None
        self._drained: trio.Event | None = None
        # The idle deadline while OPEN (moved forward by every read), the close handshake's after.
        self._deadline = trio.current_time() + limits.idle_timeout
        self._deadlines = deadlines
        self._entry = deadlines.watch(self._deadline, self)
        self._control_count = 0
        self._control_window_end = 0.0

    # -- Transport ---------------------------------------------------------------------------

    def send(self, frame: bytes, droppable: bool = False) -> None:
        """Write `frame` now if the kernel takes it, else queue it (see `Transport.send`)."""
        if self._state != _OPEN:
            return
        if self._outbox is None:
            if self._stream is None:
                sent = self._send_now(frame)
                if sent is None:
                    return
                if sent == len(frame):
                    return
                if sent:
                    self._start_writer().push(memoryview(frame)[sent:])
                    return
            outbox = self._start_writer()
        else:
            outbox = self._outbox
        if not outbox.push(frame, droppable):
            _log.warning("slow consumer %s: outbox full (%d frames), closing 1013", self._peer, len(outbox))
            telemetry.emit(telemetry.SLOW_CONSUMER_DROPPED, {"dropped": len(outbox)}, {"reason": "overflow"})
            outbox.discard_unstarted()
            self.close(rfc6455.CLOSE_TRY_AGAIN_LATER, "slow consumer")

    def close(self, code: int, reason: str = "") -> None:
        """Send a close frame after what is queued, then finish the handshake (see `Transport.close`).

        A code that may not be sent (§7.4.1: 1005, 1006, 1015, unassigned) is replaced by 1011.
        """
        if self._state != _OPEN:
            return
        if not rfc6455.is_sendable_close_code(code):
            code = rfc6455.CLOSE_INTERNAL_ERROR
        self._send_close(code, rfc6455.close_frame(code, reason))

    # -- driver ------------------------------------------------------------------------------

    async def run(self, accept: Accept, received: bytes = b"") -> None:
        """Serve the connection until it is closed; then close the socket and run the callbacks.

        Blocks for the connection's lifetime. `received` holds bytes read past the request head.

        Resource handling: the socket is closed on return, whatever happened.
        Error handling: never raises `Exception`; handler bugs are logged and closed with 1011.
        """
        opened = trio.current_time()
        handler: SocketHandler | None = None
        on_closed = accept.on_closed
        try:
            try:
                handler = accept.handler(self)
            except Exception:
                _log.exception("socket handler factory failed for %s", self._peer)
                self.close(rfc6455.CLOSE_INTERNAL_ERROR, "internal error")
            del accept  # the factory is not needed any more (nor what it holds): memory per idle socket
            if received:
                self._reader.receive_data(received)
            await self._read_loop(handler)
            await self._wait_drained()
        finally:
            self._teardown()
            with trio.CancelScope(shield=True, deadline=trio.current_time() + self._limits.close_timeout):
                if handler is not None:
                    try:
                        await handler.on_close()
                    except Exception:
                        _log.exception("socket handler on_close failed for %s", self._peer)
                if on_closed is not None:
                    try:
                        on_closed()
                    except Exception:
                        _log.exception("on_closed callback failed for %s", self._peer)
            telemetry.emit(
                telemetry.SOCKET_CLOSED, {"duration": trio.current_time() - opened}, {"code": self._close_code}
            )
            _log.info("socket closed %s code=%d", self._peer, self._close_code)

    async def _read_loop(self, handler: SocketHandler | None) -> None:
        """Read and dispatch until the close handshake ends, the peer goes or a deadline passes."""
        reader = self._reader
        parsing = True  # False after a protocol violation: the rest of the stream is discarded
        while True:
            if parsing:
                try:
                    while (event := reader.next_event()) is not None:
                        if await self._dispatch(handler, event):
                            return
                except ProtocolViolation as violation:
                    parsing = False
                    if self._state == _OPEN:
                        _log.debug("protocol violation from %s: %s", self._peer, violation.reason)
                        self._half_close = True
                        self._send_close(violation.code, rfc6455.close_frame(violation.code, violation.reason))
                    else:
                        return
            if self._state == _CLOSED:
                return
            data = await self._receive()
            if not data:
                return
            if self._state == _OPEN:
                self._deadline = trio.current_time() + self._limits.idle_timeout
            if parsing:
                reader.receive_data(data)

    async def _dispatch(self, handler: SocketHandler | None, event: rfc6455.Event) -> bool:
        """Act on one message or control frame; True once the peer's close frame arrived."""
        opcode, payload = event
        if opcode <= rfc6455.OPCODE_BINARY:
            # §5.5.1: after sending a close frame the server sends no more data; the peer's
            # data frames received meanwhile are discarded.
            if self._state != _OPEN or handler is None:
                return False
            try:
                if isinstance(payload, str):
                    await handler.on_text(payload)
                else:
                    await handler.on_binary(payload)
            except Exception:
                _log.exception("socket handler failed for %s", self._peer)
                self.close(rfc6455.CLOSE_INTERNAL_ERROR, "internal error")
            return False
        assert isinstance(payload, bytes)
        now = trio.current_time()
        if now >= self._control_window_end:
            self._control_window_end = now + self._limits.control_window
            self._control_count = 0
        self._control_count += 1
        if self._control_count > self._limits.max_control_frames:
            raise ProtocolViolation(rfc6455.CLOSE_POLICY_VIOLATION, "control frame flood")
        if opcode == rfc6455.OPCODE_PING:
            if self._state == _OPEN:  # a pong may be dropped for a slow reader, like presence
                self.send(rfc6455.pong_frame(payload), droppable=True)
            return False
        if opcode == rfc6455.OPCODE_CLOSE:
            code, reason = rfc6455.parse_close(payload)
            self._close_received = True
            if self._state == _OPEN:  # §5.5.1: echo the peer's code (an empty body for none)
                echo = None if code == rfc6455.CLOSE_NO_STATUS else code
                self._send_close(code, rfc6455.close_frame(echo, reason))
            return True
        return False  # an unsolicited pong is ignored (§5.5.3)

    # -- write path --------------------------------------------------------------------------

    def _send_now(self, frame: bytes) -> int | None:
        """Write what the kernel takes of `frame` without blocking: the bytes written (0 when the
        socket would block), or None when the socket failed and the connection was aborted."""
        try:
            return self._sock.send(frame)
        except BlockingIOError:
            return 0
        except OSError:
            self._abort()
            return None

    def _write_final(self, frame: bytes) -> None:
        """Write the close frame after everything queued, beyond the outbox bound."""
        if self._outbox is not None:
            self._outbox.push_final(frame)
            return
        if self._stream is None:
            sent = self._send_now(frame)
            if sent is None:
                return
            if sent == len(frame):
                self._close_frame_written()
                return
            self._start_writer().push_final(frame[sent:])
        else:
            self._start_writer().push_final(frame)

    def _send_close(self, code: int, frame: bytes) -> None:
        """Enter CLOSING: write `frame` last and give the peer `close_timeout` to answer."""
        self._state = _CLOSING
        self._close_code = code
        self._write_final(frame)
        self._deadline = trio.current_time() + self._limits.close_timeout
        self._entry.cancel()  # the idle deadline filed is later: file the earlier one
        self._entry = self._deadlines.watch(self._deadline, self)

    def expire(self, now: float) -> float | None:
        """`Deadlines` asks (see `whispr.gateway.deadlines.Expiring`): idle → close with 4000; a
        close handshake past `close_timeout` → abort (TCP closed without waiting any longer)."""
        if self._state == _CLOSED:
            return None
        if now < self._deadline:
            return self._deadline  # moved by reads since it was filed
        if self._state == _OPEN:
            self.close(rfc6455.CLOSE_IDLE_TIMEOUT, "idle timeout")  # files the close deadline
        else:
            self._abort()
        return None

    def _start_writer(self) -> Outbox:
        outbox = self._outbox = Outbox(self._limits.outbox_max_frames, self._limits.outbox_max_bytes)
        self._nursery.start_soon(self._write_loop, outbox)
        return outbox

    async def _write_loop(self, outbox: Outbox) -> None:
        """Drain `outbox` into the socket, many frames per write; abort on a stalled or broken socket."""
        sock = self._sock
        stream = self._stream
        try:
            while outbox and self._outbox is outbox:
                sent = 0
                with trio.move_on_after(self._limits.write_timeout) as scope:
                    if stream is not None:
                        chunk = b"".join(outbox.head(_MAX_IOV))
                        await stream.send_all(chunk)
                        sent = len(chunk)
                    else:
                        await trio.lowlevel.wait_writable(sock)
                        try:
                            sent = sock.sendmsg(outbox.head(_MAX_IOV))
                        except BlockingIOError:
                            continue
                if scope.cancelled_caught:
                    _log.warning(
                        "slow consumer %s: no write progress in %ss, aborting", self._peer, self._limits.write_timeout
                    )
                    telemetry.emit(
                        telemetry.SLOW_CONSUMER_DROPPED, {"dropped": len(outbox)}, {"reason": "write_timeout"}
                    )
                    self._abort()
                    return
                outbox.consume(sent)
                telemetry.emit(telemetry.OUTBOX_DEPTH, {"depth": len(outbox)})
            if self._state == _CLOSING and self._outbox is outbox:
                self._close_frame_written()
        except _BROKEN:
            self._abort()
        finally:
            if self._outbox is outbox:
                self._outbox = None
            if self._drained is not None:
                self._drained.set()

    def _close_frame_written(self) -> None:
        """After a violation, shut the write side (FIN after our close frame, §7.1.7) so the peer
        closes promptly; discarded input then ends at its EOF instead of the close timeout."""
        if self._half_close and self._stream is None:
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._abort()

    async def _wait_drained(self) -> None:
        """Let the writer finish (our close frame included), until the close deadline."""
        if self._outbox is None or self._state == _CLOSED:
            return
        self._drained = trio.Event()
        with trio.move_on_at(self._deadline):
            await self._drained.wait()

    # -- read path and teardown --------------------------------------------------------------

    async def _receive(self) -> bytes | bytearray:
        """The next bytes from the peer; b"" at EOF or on abort (a passed close deadline aborts).

        No cancel scope here: `Deadlines` closes an idle connection and aborts a close handshake
        that ran out of time, which wakes this wait (`notify_closing`)."""
        if self._stream is not None:
            try:
                return await self._stream.receive_some(self._limits.read_size)
            except _BROKEN:
                return b""
        sock = self._sock
        while True:
            try:
                await trio.lowlevel.wait_readable(sock)
            except trio.ClosedResourceError:  # aborted by `notify_closing`
                return b""
            try:
                return sock.recv(self._limits.read_size)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.EBADF):
                    _log.warning("read error on %s: %s", self._peer, exc)
                return b""

    def _abort(self) -> None:
        """Tear the connection down without a close frame; wakes the reader and the writer."""
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self._outbox = None
        trio.lowlevel.notify_closing(self._sock)

    def _teardown(self) -> None:
        """Close TCP (the server closes first, RFC 6455 §7.1.1); idempotent, synchronous."""
        self._abort()
        self._entry.cancel()
        self._sock.close()


def tls_stream(sock: socket.socket, context: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    """A server-side TLS stream over an accepted socket (the handshake runs on first use)."""
    return trio.SSLStream(trio.SocketStream(trio.socket.from_stdlib_socket(sock)), context, server_side=True)
