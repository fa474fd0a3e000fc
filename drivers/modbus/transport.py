"""Modbus links: TCP and RTU (serial) transports that move frames.py's bytes, one request at a time.

Why not pymodbus's client: profiled polling 2,000 cabinets, 51 % of the server's CPU went to
pymodbus's client request path (transaction manager, framer objects, per-request response
objects and timers), which capped the server at about 5,300 requests/s on one core. A link
here costs one future, one timer handle and one ``transport.write`` per request; framing
and checks are the pure functions of ``frames.py``. pymodbus stays the simulators' server,
so every test of this client is against the library's own implementation of the protocol.

A :class:`Connection` is one TCP host:port or one serial line, shared by every unit behind
it (a gateway, an RS-485 bus); requests take turns on it (at most one outstanding).
Connections are (re)opened with capped, jittered exponential backoff, so a city of dead
cabinets never reconnects in a busy loop or in lock-step.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass

import serial

from drivers.modbus import frames
from drivers.modbus.frames import FrameError
from scada.backoff import Backoff
from scada.driver_api import DeviceTimeout, DeviceUnreachable


class _Link:
    """What the TCP and RTU links share: the pending request's future and its timer."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._future: asyncio.Future | None = None
        self.stray_frames = 0  # answers to nothing pending (late answers to timed-out requests)

    @property
    def connected(self) -> bool:
        raise NotImplementedError

    async def _exchange(self, send: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        fut = self._future = loop.create_future()
        timer = loop.call_later(self.timeout, _expire, fut)
        try:
            self._send(send)
            return await fut
        finally:
            timer.cancel()
            self._future = None

    def _resolve(self, pdu: bytes | None, error: BaseException | None = None) -> None:
        fut = self._future
        if fut is None or fut.done():
            self.stray_frames += 1
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(pdu)

    def _send(self, data: bytes) -> None:
        raise NotImplementedError


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError("no answer"))


class TcpLink(_Link, asyncio.Protocol):
    """Modbus TCP: MBAP framing, answers matched by transaction id and unit."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        super().__init__(timeout)
        self.host, self.port = host, port
        self.name = f"{host}:{port}"
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._tid = random.randrange(0x10000)
        self._expect: tuple[int, int] = (-1, -1)

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.timeout):
            await loop.create_connection(lambda: self, self.host, self.port)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._buffer.clear()

    async def request(self, unit: int, pdu: bytes) -> bytes:
        self._tid = tid = (self._tid + 1) & 0xFFFF
        self._expect = (tid, unit)
        return await self._exchange(frames.tcp_frame(tid, unit, pdu))

    def _send(self, data: bytes) -> None:
        if self._transport is None:
            raise ConnectionError("not connected")
        self._transport.write(data)

    # asyncio.Protocol

    def connection_made(self, transport) -> None:
        self._transport = transport
        self._buffer.clear()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            answers = frames.split_tcp(self._buffer)
        except FrameError as exc:
            # Nothing after a broken header can be trusted to start on a frame: drop the stream.
            self._resolve(None, exc)
            self.close()
            return
        for tid, unit, pdu in answers:
            if (tid, unit) == self._expect:
                self._resolve(pdu)
            elif tid == self._expect[0]:
                self._resolve(None, FrameError(f"answer from unit {unit}, asked unit {self._expect[1]}"))
            else:
                self.stray_frames += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._resolve(None, ConnectionError(f"connection lost: {exc}" if exc else "connection closed by the device"))


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """An RS-232/RS-485 line: device path and character format."""

    port: str
    baudrate: int = 19200
    parity: str = "E"  # N, E or O: the Modbus RTU default is even parity
    stopbits: int = 1
    bytesize: int = 8

    @property
    def char_time(self) -> float:
        """Seconds per character on the wire (start + data + parity + stop bits)."""
        bits = 1 + self.bytesize + (self.parity != "N") + self.stopbits
        return bits / self.baudrate

    @property
    def frame_gap(self) -> float:
        """The silent interval that separates RTU frames: 3.5 characters, 1.75 ms above 19,200 baud."""
        return 1.75e-3 if self.baudrate > 19200 else 3.5 * self.char_time


class RtuLink(_Link):
    """Modbus RTU over a serial line (pyserial opens and configures it; asyncio watches its fd)."""

    def __init__(self, settings: SerialSettings, timeout: float) -> None:
        super().__init__(timeout)
        self.settings = settings
        self.name = settings.port
        self._serial: serial.Serial | None = None
        self._buffer = bytearray()
        self._request = b""
        self._unit = 0
        self._last_activity = 0.0

    @property
    def connected(self) -> bool:
        return self._serial is not None

    async def open(self) -> None:
        s = self.settings
        try:
            port = serial.Serial(
                s.port,
                baudrate=s.baudrate,
                bytesize=s.bytesize,
                parity=s.parity,
                stopbits=s.stopbits,
                timeout=0,
                write_timeout=self.timeout,
            )
        except (serial.SerialException, ValueError) as exc:
            raise OSError(str(exc)) from None
        self._serial = port
        asyncio.get_running_loop().add_reader(port.fileno(), self._readable)

    def close(self) -> None:
        if self._serial is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._serial.fileno())
            except RuntimeError:  # no running loop (closing at interpreter exit)
                pass
            self._serial.close()
            self._serial = None
        self._buffer.clear()

    async def request(self, unit: int, pdu: bytes) -> bytes:
        # RTU frames are delimited by silence: wait out the 3.5-character gap after the last byte.
        gap = self._last_activity + self.settings.frame_gap - time.monotonic()
        if gap > 0:
            await asyncio.sleep(gap)
        self._buffer.clear()  # whatever arrived between requests answers nothing we will ask
        self._request, self._unit = pdu, unit
        try:
            return await self._exchange(frames.rtu_frame(unit, pdu))
        finally:
            self._last_activity = time.monotonic()

    def _send(self, data: bytes) -> None:
        if self._serial is None:
            raise ConnectionError("serial port closed")
        try:
            self._serial.write(data)
        except serial.SerialException as exc:
            raise ConnectionError(str(exc)) from None

    def _readable(self) -> None:
        if self._serial is None:  # closed: its reader went with it (close() removes it)
            return
        try:
            data = os.read(self._serial.fileno(), 4096)
        except BlockingIOError:
            return
        except OSError as exc:  # the adapter went away (USB unplugged, pty closed)
            self._resolve(None, ConnectionError(f"serial port: {exc}"))
            self.close()
            return
        self._last_activity = time.monotonic()
        if self._future is None or self._future.done():
            self.stray_frames += bool(data)
            return
        self._buffer += data
        try:
            n = frames.rtu_response_length(self._buffer, self._request)
            if n is None or len(self._buffer) < n:
                return
            frame = bytes(self._buffer[:n])
            del self._buffer[:n]
            self._resolve(frames.parse_rtu(frame, self._unit))
        except FrameError as exc:
            self._buffer.clear()
            self._resolve(None, exc)


class Connection:
    """One link shared by the units behind it: one request at a time, reopened with backoff."""

    def __init__(self, link: TcpLink | RtuLink, backoff: Backoff) -> None:
        self.link = link
        self.backoff = backoff
        self.lock = asyncio.Lock()
        self.failures = 0
        self.next_attempt = 0.0
        self.silent_requests = 0  # requests in a row that got no answer

    @property
    def name(self) -> str:
        return self.link.name

    async def _ensure_open(self) -> None:
        if self.link.connected:
            return
        now = time.monotonic()
        if now < self.next_attempt:
            raise DeviceUnreachable(f"{self.name} unreachable; retry in {self.next_attempt - now:.1f} s")
        try:
            await self.link.open()
        except (TimeoutError, OSError) as exc:
            self.link.close()
            self._failed()
            raise DeviceUnreachable(f"cannot connect to {self.name}: {exc or type(exc).__name__}") from None
        self.failures = 0

    def _failed(self) -> None:
        self.failures += 1
        self.next_attempt = time.monotonic() + self.backoff.delay(self.failures)

    async def request(self, unit: int, pdu: bytes) -> bytes:
        """Send one request PDU to ``unit``; return the answer's data, checked against the request.

        Raises DeviceUnreachable (no answer, link down), DeviceRejected(code) (an exception
        response) or FrameError (an answer that does not fit the request).
        """
        async with self.lock:
            await self._ensure_open()
            try:
                response = await self.link.request(unit, pdu)
            except TimeoutError:
                self.silent_requests += 1
                # Late answers are never taken for a later request's (TCP matches transaction
                # ids, RTU waits out the line's silence), so one silent unit behind a gateway
                # does not cost its neighbours their connection. A TCP link silent for two
                # requests in a row, whatever the unit, is reopened: a cut cable leaves a
                # half-open connection that shows itself no other way.
                if self.silent_requests >= 2 and isinstance(self.link, TcpLink):
                    self.link.close()
                    self._failed()
                raise DeviceTimeout(f"no answer from unit {unit} within {self.link.timeout} s") from None
            except (ConnectionError, OSError) as exc:
                self.link.close()
                self._failed()
                raise DeviceUnreachable(f"{type(exc).__name__}: {exc}") from None
            self.silent_requests = 0
        return frames.check_response(pdu, response)

    def close(self) -> None:
        self.link.close()
