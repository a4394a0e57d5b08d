"""uvicorn's HTTP protocol with a deadline for the request head: a slow client cannot hold a connection.

Usage: ``uvicorn.run(app, http=HTTP_PROTOCOL)`` (what ``digitlab serve`` does).

uvicorn closes an idle kept-alive connection after ``timeout_keep_alive``, but a connection that never
sends a byte, or sends part of a request line and headers and then stalls, stays open for ever (a
handful of such clients hold the server's connections). Here a connection must complete each request
head within ``DIGITLAB_SERVE_HEADER_TIMEOUT_S`` (``ServeSettings.header_timeout_s``) of connecting or
of the request's first byte; past it the connection is closed (with a 408 when part of a request came). The body has
its own deadline in the app (``body_timeout_s``), where the request is known.
"""

import asyncio
import os

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from digitlab.serve.settings import ENV_PREFIX, ServeSettings

HTTP_PROTOCOL = "digitlab.serve.protocol:HeadTimeoutProtocol"
_ENV = f"{ENV_PREFIX}HEADER_TIMEOUT_S"
_TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def head_timeout_s() -> float:
    """The deadline from the environment (the settings' default when unset)."""
    raw = os.environ.get(_ENV)
    default = ServeSettings.model_fields["header_timeout_s"].default
    return float(raw) if raw else float(default)


class HeadTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing a connection whose request head does not arrive in time."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._head_timeout = head_timeout_s()
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_begun = False  # some of a request head has arrived (else the connection is silent)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # a connection that sends nothing is timed too

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        self._head_begun = False
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        # a 408 for a stalled request; a silent connection (a browser's preconnect) is only closed
        if self._head_begun and (self.cycle is None or self.cycle.response_complete):
            self.transport.write(_TIMEOUT_408)
        self.transport.close()
