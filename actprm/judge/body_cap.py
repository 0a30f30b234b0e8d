"""A cap on the size of a judge's reply, applied while it is decoded.

A reply compressed on the wire (gzip, 204 KB) can decode to 200 MB; the client would hold it whole,
then its JSON, before the answer-size check sees it. `CappedTransport` wraps the client's transport:
it asks for gzip or deflate only, decodes the body itself in bounded pieces and stops the moment
the decoded bytes pass the cap (`ReplyTooLarge`). An encoding it did not ask for (br, zstd, two
encodings in a row) is refused (`BadEncoding`).
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx2

ACCEPTED = "gzip, deflate"
PIECE = 64 * 1024  # decoded bytes produced per step


class ReplyTooLarge(Exception):
    """The reply's body decodes to more than the cap (the server sent it: it was paid)."""


class BadEncoding(Exception):
    """The reply's body has a content encoding that was not asked for."""


def _decompressor(encoding: str) -> Any:
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(zlib.MAX_WBITS | 16)
    if encoding == "deflate":
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib header (or gzip)
    raise BadEncoding(f"the reply's content-encoding {encoding!r} was not asked for")


class CappedStream(httpx2.AsyncByteStream):
    """The decoded body of `raw`, at most `cap` bytes."""

    def __init__(self, raw: Any, encoding: str, cap: int):
        self.raw, self.cap = raw, cap
        self.decoder = _decompressor(encoding)
        self.size = 0

    def _count(self, data: bytes) -> bytes:
        self.size += len(data)
        if self.size > self.cap:
            raise ReplyTooLarge(f"the reply decodes to more than {self.cap:,} bytes")
        return data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.raw:
                if self.decoder is None:
                    yield self._count(chunk)
                    continue
                data = chunk
                while data:
                    try:
                        piece = self.decoder.decompress(data, PIECE)
                    except zlib.error as exc:
                        raise BadEncoding(f"the reply's body does not decode ({exc})") from None
                    yield self._count(piece)
                    data = self.decoder.unconsumed_tail
            if self.decoder is not None:
                yield self._count(self.decoder.flush())
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await self.raw.aclose()


class CappedTransport(httpx2.AsyncBaseTransport):
    """`inner` (default: a plain HTTP transport) with every reply's body decoded here, at most `cap` bytes."""

    def __init__(self, cap: int, inner: httpx2.AsyncBaseTransport | None = None):
        self.cap = cap
        self.inner = inner or httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.headers["accept-encoding"] = ACCEPTED
        response = await self.inner.handle_async_request(request)
        encoding = response.headers.get("content-encoding", "").strip().lower()
        try:
            stream = CappedStream(response.stream, encoding, self.cap)
        except BadEncoding:
            await response.aclose()
            raise
        headers = [(k, v) for k, v in response.headers.multi_items()
                   if k.lower() not in ("content-encoding", "content-length")]
        return httpx2.Response(response.status_code, headers=headers, stream=stream,
                               extensions=response.extensions)

    async def aclose(self) -> None:
        await self.inner.aclose()
