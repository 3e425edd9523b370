"""An SSE stream's body chunks written straight to uvicorn's transport.

Every live event is one write per stream: with 10,000 streams on a topic an
event is 10,000 writes, and around each one the ASGI ``send`` cost a message
dict, a coroutine stepped by hand (``_Stream._emit``) and uvicorn's checks of
the message, about a fifth of the server's time per delivery
(bench/streams_10k.py, sampled). When a stream's ``send`` is the bound ``send``
of uvicorn's httptools request cycle, with a chunked response under way, a
chunk is written here exactly as that ``send`` writes it: the size line, the
chunk, CRLF, in one ``transport.write``.

Only that one case. When the transport pushes back (uvicorn's flow control is
paused), once the client is gone, and for the last chunk, the stream uses the
ASGI ``send`` as before, so backpressure, disconnects and the end of the
response stay uvicorn's own handling; a ``send`` that is anything else (h11, a
middleware's wrapper, a test client) is never written around.
tests/test_private_apis.py fails when uvicorn's cycle changes shape.
"""

from __future__ import annotations

from typing import Any

from starlette.types import Send
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle


def direct_target(send: Send) -> Any | None:
    """The uvicorn request cycle behind ``send`` if chunks may be written to its
    transport directly, else ``None``. Called once the response has started."""
    cycle = getattr(send, "__self__", None)
    if (
        type(cycle) is not RequestResponseCycle
        or getattr(send, "__func__", None) is not RequestResponseCycle.send
        or not cycle.response_started
        or cycle.response_complete
        or not cycle.chunked_encoding
        or cycle.scope["method"] == "HEAD"
    ):
        return None
    return cycle


def write_chunk(cycle: Any, chunk: bytes) -> bool:
    """Write ``chunk`` as ``cycle.send`` would, if nothing stands in the way;
    ``False`` when the ASGI ``send`` must take it (it waits for the transport,
    or knows the client is gone). An empty chunk would end a chunked body."""
    if not chunk or cycle.flow.write_paused or cycle.disconnected or cycle.response_complete:
        return False
    cycle.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
    return True


__all__ = ["direct_target", "write_chunk"]
