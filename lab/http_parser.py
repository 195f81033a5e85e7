"""A sans-IO parser for HTTP/1.x responses that is strict about framing.

It never touches a socket: `feed` it the bytes that arrived and it returns the `Response` once
the response is complete; call `feed_eof` when the server closed. It keeps what a load engine
counts (status, the first value of a few named fields, whether the connection may be reused)
and discards bodies as they pass (or keeps their first `keep_body` bytes, when asked), so its
memory is bounded by the limits below.

Strict where a lenient reading would count the wrong thing (RFC 9112): a field line must be
`token ":" value` without control characters (no obs-fold, no bare CR or LF); Content-Length
and chunk sizes are digits only (no sign, no space, no "0x"); differing Content-Length values,
and Content-Length beside Transfer-Encoding, are refused; the CRLF after chunk data is checked;
bytes left over after a complete response are an error, since one request is open at a time
and a leftover means the framing was misread (or the response smuggles another). Every error
is a `ProtocolError`, whatever the input and however it is split between calls.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import NamedTuple

MAX_HEAD = 64 * 1024  # status line and fields, without the blank line
MAX_CHUNK_LINE = 4096  # a chunk size with its extensions, without the CRLF
MAX_TRAILER = 16 * 1024  # the trailer section with its CRLFs, the final blank line included
_MAX_DIGITS = 18  # of a Content-Length (below 10**18), and 16 hex digits for a chunk size

_VALUE = rb"[\t -~\x80-\xff]*+"  # a field value or reason phrase: no control character but HTAB
_FIELD_LINE = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]++:" + _VALUE  # RFC 9110 §5.1 token, then the value
_HEAD = re.compile(rb"HTTP/1\.[0-9] [1-5][0-9][0-9](?: " + _VALUE + rb")?(?:\r\n" + _FIELD_LINE + rb")*+\r\n")
_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] [1-5][0-9][0-9](?: " + _VALUE + rb")?")
_FIELD = re.compile(_FIELD_LINE)
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;" + _VALUE + rb")?")
_STATUS_PREFIX = b"HTTP/1."

# Where the parse of the current response stands
_HEAD_STATE, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE = range(7)
_COMPLETE, _FAILED = 7, 8  # waiting for a reset: after the response, or after a ProtocolError


class ProtocolError(Exception):
    """The bytes are not a well-framed HTTP/1.x response."""


class IncompleteResponse(ProtocolError):
    """The server closed the connection in the middle of a response."""


class Response(NamedTuple):
    """One complete response: what a load engine counts of it."""

    status: int
    fields: Mapping[bytes, bytes]  # each wanted name (lower case) -> its first value, b"" if absent
    keep_alive: bool  # the connection may carry the next request
    body_length: int  # bytes of content (after undoing the chunked coding)
    body: bytes = b""  # its first `keep_body` bytes (b"" unless the parser was asked to keep them)


_new_tuple = tuple.__new__  # Response without the Python-level __new__ of a NamedTuple (hot path)


class ResponseParser:
    """Parses the response to each request sent on one connection (no pipelining).

    `reset` before each request: the parser then expects one response and, once it is
    complete, refuses further bytes until the next `reset`, so a leftover is an error however
    the reads split it. `fields` names (case-insensitive) the header fields whose first value
    each Response carries. Interim 1xx responses are skipped. After a ProtocolError the
    parser refuses more bytes until `reset`, which is also how a new connection starts.
    With `keep_body` > 0 each Response also carries the first `keep_body` bytes of its content
    (after undoing the chunked coding); 0, the default, keeps none and costs nothing.
    """

    __slots__ = (
        "_wanted",
        "_keep",
        "_body",
        "_buf",
        "_scanned",
        "_state",
        "_remaining",
        "_trailer",
        "_head",
        "_length",
        "_started",
    )

    def __init__(self, fields: Iterable[str] = (), *, keep_body: int = 0) -> None:
        names = [name.lower().encode("latin-1") for name in fields]
        for name in names:
            if not _FIELD.fullmatch(name + b":"):
                raise ValueError(f"not a field name: {name!r}")
        if keep_body < 0:
            raise ValueError(f"keep_body must be >= 0, not {keep_body}")
        self._wanted = tuple((name, b"\r\n" + name + b":") for name in names)
        self._keep = keep_body
        self._body = bytearray()  # what is kept of the current response's content
        self._buf = bytearray()
        self._remaining = 0  # bytes still to come of a Content-Length body or of a chunk
        self._trailer = 0  # bytes of the trailer section so far
        self._head = _NO_HEAD  # the head of the current response, once it has arrived
        self._length = 0  # bytes of its content so far (all of them with a Content-Length)
        self.reset()

    def reset(self) -> None:
        """Expect the response to a new request, on this connection or a new one (whatever
        was half-read is dropped)."""
        if self._buf:
            self._buf.clear()
        if self._body:
            self._body.clear()
        self._scanned = 0  # bytes at the start of _buf already searched for a line end
        self._state = _HEAD_STATE
        self._started = False

    @property
    def started(self) -> bool:
        """Some byte has arrived since the last reset."""
        return self._started

    def feed(self, data: bytes) -> Response | None:
        """Take the next bytes of the connection; the response once it is complete, else None.

        Raises ProtocolError when the bytes are not a well-framed response, and when bytes
        follow the end of a complete one (in the same read or a later one).
        """
        state = self._state
        if state >= _COMPLETE:
            if state == _FAILED:
                raise ProtocolError("the parser failed before; reset it for a new connection")
            if data:
                self._state = _FAILED
                raise ProtocolError(f"{len(data)} bytes after the end of a complete response")
        if not data:
            return None
        self._started = True
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data  # the usual case, a whole response in one read: no copy
        try:
            response, pos = self._parse(view)
        except ProtocolError:
            self._state = _FAILED
            buf.clear()
            raise
        if response is not None:
            leftover = len(view) - pos
            if view is buf:
                buf.clear()
            if leftover:
                self._state = _FAILED
                raise ProtocolError(f"{leftover} bytes after the end of a complete response")
            self._state = _COMPLETE
            return response
        if view is buf:
            del buf[:pos]
        else:
            buf += view[pos:]
        return None

    def feed_eof(self) -> Response | None:
        """The server closed the connection: the response if that ended it (a body that runs
        until the close), None if it came after a complete response or before any byte of one;
        IncompleteResponse if it cut a response short."""
        state = self._state
        if state == _FAILED:
            raise ProtocolError("the parser failed before; reset it for a new connection")
        if state == _COMPLETE:
            return None
        if state == _UNTIL_CLOSE:
            self._state = _COMPLETE
            return self._response()
        if not self._started:
            return None
        self._state = _FAILED
        raise IncompleteResponse("the server closed the connection in the middle of a response")

    # -- parsing ----------------------------------------------------------------------------

    def _parse(self, view: bytes | bytearray) -> tuple[Response | None, int]:
        """Consume `view` from its start: (the complete response or None, bytes consumed)."""
        pos = 0
        end_of_view = len(view)
        scanned, self._scanned = self._scanned, 0  # only for the element pending at position 0
        state = self._state
        while True:
            if state == _HEAD_STATE:
                end = view.find(b"\r\n\r\n", max(pos, scanned - 3))
                if end < 0:
                    self._check_partial_head(view, pos, end_of_view, scanned)
                    self._scanned = end_of_view - pos
                    break
                if end - pos > MAX_HEAD:
                    raise ProtocolError(f"response head longer than {MAX_HEAD} bytes")
                head = _read_head(bytes(view[pos : end + 2]), self._wanted)
                pos = end + 4
                state = head.framing
                if (
                    head.status >= 200
                ):  # not an interim response (100 Continue), after which the real one comes
                    self._head = head
                    self._remaining = self._length = head.length
                if state == _LENGTH:
                    if end_of_view - pos >= self._remaining:  # the usual case: the whole body is here
                        end = pos + self._remaining
                        if self._keep:  # one copy, straight from what arrived
                            head = self._head
                            body = bytes(view[pos : min(end, pos + self._keep)])
                            return _new_tuple(
                                Response, (head.status, head.fields, head.keep_alive, self._length, body)
                            ), end
                        return self._response(), end
                elif state == _COMPLETE:
                    return self._response(), pos
            elif state == _LENGTH:
                n = min(end_of_view - pos, self._remaining)
                if self._keep:
                    self._keep_content(view, pos, pos + n)
                pos += n
                self._remaining -= n
                if self._remaining:
                    break
                return self._response(), pos
            elif state == _CHUNK_DATA:
                n = min(end_of_view - pos, self._remaining)
                if self._keep:
                    self._keep_content(view, pos, pos + n)
                pos += n
                self._remaining -= n
                if self._remaining:
                    break
                state = _CHUNK_END
            elif state == _CHUNK_END:
                have = view[pos : pos + 2]
                if have != b"\r\n"[: len(have)]:
                    raise ProtocolError("chunk data not followed by CRLF")
                if len(have) < 2:
                    break  # a lone CR stays in the buffer
                pos += 2
                state = _CHUNK_SIZE
            elif state == _CHUNK_SIZE:
                end = view.find(b"\r\n", max(pos, scanned - 1))
                if end < 0:
                    if _shortest_line(view, pos, end_of_view) > MAX_CHUNK_LINE:
                        raise ProtocolError(f"chunk size line longer than {MAX_CHUNK_LINE} bytes")
                    self._scanned = end_of_view - pos
                    break
                if end - pos > MAX_CHUNK_LINE:
                    raise ProtocolError(f"chunk size line longer than {MAX_CHUNK_LINE} bytes")
                match = _CHUNK_LINE.fullmatch(view, pos, end)
                if match is None:
                    raise ProtocolError(f"bad chunk size line {bytes(view[pos:end])[:40]!r}")
                size = int(match.group(1), 16)
                pos = end + 2
                self._length += size
                if size:
                    self._remaining = size
                    state = _CHUNK_DATA
                else:
                    self._trailer = 0
                    state = _TRAILER
            elif state == _TRAILER:
                end = view.find(b"\r\n", max(pos, scanned - 1))
                if end < 0:
                    # The pending line, its CRLF and, unless it may be that line, the blank one.
                    line = _shortest_line(view, pos, end_of_view)
                    if self._trailer + line + (4 if line else 2) > MAX_TRAILER:
                        raise ProtocolError(f"trailer section longer than {MAX_TRAILER} bytes")
                    self._scanned = end_of_view - pos
                    break
                self._trailer += end - pos + 2
                if self._trailer > MAX_TRAILER:
                    raise ProtocolError(f"trailer section longer than {MAX_TRAILER} bytes")
                if end == pos:
                    return self._response(), end + 2
                if not _FIELD.fullmatch(view, pos, end):
                    raise ProtocolError(f"bad trailer field line {bytes(view[pos:end])[:40]!r}")
                pos = end + 2
            else:  # _UNTIL_CLOSE: the body ends when the server closes
                if self._keep:
                    self._keep_content(view, pos, end_of_view)
                self._length += end_of_view - pos
                pos = end_of_view
                break
            scanned = 0
        self._state = state
        return None, pos

    def _check_partial_head(self, view: bytes | bytearray, pos: int, end: int, scanned: int) -> None:
        """Refuse a head that cannot become valid however it goes on, so that garbage fails
        at once and not at the timeout (only on the slow path, a head split across reads).
        `scanned` bytes from `pos` were checked by an earlier call."""
        start = bytes(view[pos : pos + len(_STATUS_PREFIX)])
        if not _STATUS_PREFIX.startswith(start):
            raise ProtocolError(f"not an HTTP/1.x status line: {start!r}")
        # The head ends where CRLFCRLF starts: at the earliest in the last bytes that begin one.
        ending = next(n for n in (3, 2, 1, 0) if view.endswith(b"\r\n\r\n"[:n]))
        if end - pos - ending > MAX_HEAD:
            raise ProtocolError(f"response head longer than {MAX_HEAD} bytes")
        # Every LF among the bytes not seen before must end a CRLF (whose CR may be older).
        new = pos + scanned
        if view.count(b"\n", new, end) != view.count(b"\r\n", max(pos, new - 1), end):
            raise ProtocolError("a bare LF in the response head")
        line_end = view.find(b"\r\n", pos, end)
        if line_end >= 0 and not _STATUS_LINE.fullmatch(view, pos, line_end):
            raise ProtocolError(f"bad status line {bytes(view[pos:line_end])[:80]!r}")

    def _keep_content(self, view: bytes | bytearray, start: int, stop: int) -> None:
        """Keep content bytes [start, stop) of `view`, up to `keep_body` in all."""
        room = self._keep - len(self._body)
        if room > 0:
            self._body += view[start : min(stop, start + room)]

    def _response(self) -> Response:
        head = self._head
        body = bytes(self._body) if self._body else b""
        return _new_tuple(Response, (head.status, head.fields, head.keep_alive, self._length, body))


class _Head(NamedTuple):
    """What a response's head says."""

    status: int
    fields: Mapping[bytes, bytes]  # read-only: one head's fields are shared by its Responses
    keep_alive: bool
    framing: int  # the parser's state after the head (_HEAD_STATE after an interim response)
    length: int  # the Content-Length, else 0


_NO_HEAD = _Head(0, MappingProxyType({}), True, _HEAD_STATE, 0)


@functools.lru_cache(maxsize=256)
def _read_head(head: bytes, wanted: tuple[tuple[bytes, bytes], ...]) -> _Head:
    """Take a head (with the CRLF of its last line) apart; `wanted` holds (lower-case name,
    b"\\r\\nname:") of the fields whose first value to keep. ProtocolError if it is not a valid one.

    Memoized: a load meets the same few heads again and again (nginx's differ by replica and
    by the Date, once a second), and the cache spares each response most of the parse.
    """
    if _HEAD.fullmatch(head) is None:
        raise ProtocolError(_what_is_wrong(head))
    status = int(head[9:12])
    if status < 200:
        if status == 101:
            raise ProtocolError("101 Switching Protocols, but no upgrade was asked for")
        return _Head(status, _NO_HEAD.fields, True, _HEAD_STATE, 0)
    http10 = head[7] == 0x30  # "HTTP/1.0"
    # Fields are found in the lower-cased head: after the check, a "\r\nname:" in it can only
    # start a field line, and every line ends with CRLF. Values are cut from `head`.
    low = head.lower()
    fields = MappingProxyType({name: _first(head, low, prefix) for name, prefix in wanted})
    connection = _values(low, b"\r\nconnection:")
    if connection != [b"keep-alive"]:  # the usual value needs no splitting
        connection = _tokens(connection)
    keep_alive = b"close" not in connection and (not http10 or b"keep-alive" in connection)
    framing, length = _framing(low, http10)
    if status == 204 or status == 304:
        framing, length = _COMPLETE, 0  # never a body, whatever the fields say
    elif framing == _UNTIL_CLOSE:
        keep_alive = False
    return _Head(status, fields, keep_alive, framing, length)


def _framing(low: bytes, http10: bool) -> tuple[int, int]:
    """How the body is delimited (RFC 9112 §6.3): the parser's next state and the Content-Length."""
    encodings = _values(low, b"\r\ntransfer-encoding:")
    lengths = _values(low, b"\r\ncontent-length:")
    if encodings:
        if lengths:
            raise ProtocolError("both Transfer-Encoding and Content-Length")
        if http10:
            raise ProtocolError("Transfer-Encoding in an HTTP/1.0 response")
        codings = [c for c in _tokens(encodings) if c]
        if codings.count(b"chunked") > 1:
            raise ProtocolError("chunked applied twice")
        if codings and codings[-1] == b"chunked":
            return _CHUNK_SIZE, 0
        return _UNTIL_CLOSE, 0  # a response whose last coding is not chunked ends with the connection
    if not lengths:
        return _UNTIL_CLOSE, 0
    if len(lengths) == 1 and lengths[0].isdigit():
        number = lengths[0]
    else:  # repeated fields or a list ("42, 42") are fine if they agree: proxies combine them
        numbers = {n.strip(b" \t") for value in lengths for n in value.split(b",")}
        if len(numbers) > 1:
            raise ProtocolError(f"conflicting Content-Length values {sorted(numbers)!r}")
        (number,) = numbers
    if not (number.isdigit() and len(number) <= _MAX_DIGITS):
        raise ProtocolError(f"bad Content-Length {number[:40]!r}")
    length = int(number)
    return (_LENGTH if length else _COMPLETE), length


def _first(head: bytes, low: bytes, prefix: bytes) -> bytes:
    """The first value of the field `prefix` (b"\\r\\nname:") finds in `low`, cut from `head`;
    b"" when there is none."""
    start = low.find(prefix)
    if start < 0:
        return b""
    start += len(prefix)
    return head[start : head.find(b"\r\n", start)].strip(b" \t")


def _values(low: bytes, prefix: bytes) -> list[bytes]:
    """Every value of the field `prefix` (b"\\r\\nname:") finds in a lower-cased head."""
    values = []
    start = low.find(prefix)
    while start >= 0:
        start += len(prefix)
        end = low.find(b"\r\n", start)
        values.append(low[start:end].strip(b" \t"))
        start = low.find(prefix, end)
    return values


def _shortest_line(view: bytes | bytearray, pos: int, end: int) -> int:
    """How long the line that starts at `pos` will be at least, when what has arrived of it
    (up to `end`) holds no CRLF yet: all of it, but a last CR may start its CRLF."""
    return end - pos - (1 if view.endswith(b"\r") else 0)


def _tokens(values: list[bytes]) -> list[bytes]:
    """The comma-separated tokens of a field's values (already in lower case)."""
    return [token.strip(b" \t") for value in values for token in value.split(b",")]


def _what_is_wrong(head: bytes) -> str:
    """Which line of a head that failed the check is bad (only on the error path)."""
    lines = head[:-2].split(b"\r\n")
    if not _STATUS_LINE.fullmatch(lines[0]):
        return f"bad status line {lines[0][:80]!r}"
    for line in lines[1:]:
        if not _FIELD.fullmatch(line):
            return f"bad field line {line[:80]!r}"
    return "bad response head"
