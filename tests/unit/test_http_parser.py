"""The sans-IO response parser: tables of good and bad responses, each split at every byte."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab import http_parser
from lab.http_parser import IncompleteResponse, ProtocolError, Response, ResponseParser

WANTED = ("X-Served-By", "X-Upstream-Addr")
CL5 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def fields(served_by: bytes = b"", upstream: bytes = b"") -> dict[bytes, bytes]:
    return {b"x-served-by": served_by, b"x-upstream-addr": upstream}


def chunked(*chunks: bytes, trailer: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n" + trailer + b"\r\n"


# (id, the bytes of one response, whether the server then closes, the Response expected)
GOOD: list[tuple[str, bytes, bool, Response]] = [
    (
        "content-length",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Served-By: r1\r\nX-Upstream-Addr: 10.0.0.1:80\r\n\r\nhello",
        False,
        Response(200, fields(b"r1", b"10.0.0.1:80"), True, 5),
    ),
    (
        "nginx-like",
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 20 May 2025 22:00:00 GMT\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 14\r\nConnection: keep-alive\r\n"
        b"X-Served-By: r1\r\nX-Upstream-Addr: 127.0.0.1:40001, 127.0.0.1:40002\r\n\r\nhello from r1\n",
        False,
        Response(200, fields(b"r1", b"127.0.0.1:40001, 127.0.0.1:40002"), True, 14),
    ),
    ("empty body", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False, Response(200, fields(), True, 0)),
    (
        "spaces around a length",
        b"HTTP/1.1 200 OK\r\nContent-Length: \t 5 \t\r\n\r\nhello",
        False,
        Response(200, fields(), True, 5),
    ),
    (
        "the same length twice",
        CL5 + b"content-length: 5\r\n\r\nhello",
        False,
        Response(200, fields(), True, 5),
    ),
    (
        "a list of one length",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
        False,
        Response(200, fields(), True, 5),
    ),
    (
        "leading zeros",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0005\r\n\r\nhello",
        False,
        Response(200, fields(), True, 5),
    ),
    (
        "chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Served-By: r2\r\n\r\n" + chunked(b"hel", b"lo"),
        False,
        Response(200, fields(b"r2"), True, 5),
    ),
    (
        "chunked, extensions, hex sizes and a trailer",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"
        b'a;name=value\r\n0123456789\r\n000B ; x = "y"\r\nhello world\r\n0\r\nExpires: never\r\nX-T:\r\n\r\n',
        False,
        Response(200, fields(), True, 21),
    ),
    (
        "gzip, then chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n" + chunked(b"zzz"),
        False,
        Response(200, fields(), True, 3),
    ),
    (
        "transfer-encoding in two fields",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"z"),
        False,
        Response(200, fields(), True, 1),
    ),
    (
        "last coding not chunked: until close",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzzzz",
        True,
        Response(200, fields(), False, 4),
    ),
    (
        "no length: until close",
        b"HTTP/1.1 200 OK\r\nX-Served-By: r3\r\n\r\nall of it\r\n\r\n",
        True,
        Response(200, fields(b"r3"), False, 13),
    ),
    (
        "until close, no body",
        b"HTTP/1.1 200 OK\r\n\r\n",
        True,
        Response(200, fields(), False, 0),
    ),
    (
        "HTTP/1.0 closes",
        b"HTTP/1.0 200 OK\r\n" + b"Content-Length: 2\r\n\r\nhi",
        False,
        Response(200, fields(), False, 2),
    ),
    (
        "HTTP/1.0 keep-alive",
        b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nhi",
        False,
        Response(200, fields(), True, 2),
    ),
    (
        "connection close",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi",
        False,
        Response(200, fields(), False, 2),
    ),
    (
        "connection tokens",
        b"HTTP/1.1 200 OK\r\nConnection: Upgrade\r\nConnection: keep-alive, CLOSE\r\nContent-Length: 0\r\n\r\n",
        False,
        Response(200, fields(), False, 0),
    ),
    (
        "204 ignores a length",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\nX-Served-By: r1\r\n\r\n",
        False,
        Response(204, fields(b"r1"), True, 0),
    ),
    (
        "304 has no body",
        b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
        False,
        Response(304, fields(), True, 0),
    ),
    (
        "interim responses first",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n"
        b"X-Served-By: not-this-one\r\n\r\n" + CL5 + b"X-Served-By: r1\r\n\r\nhello",
        False,
        Response(200, fields(b"r1"), True, 5),
    ),
    (
        "field names in any case, the first value counts",
        b"HTTP/1.1 503 Service Unavailable\r\nx-SERVED-by:  r2 \r\nX-Served-By: r3\r\ncontent-LENGTH: 0\r\n\r\n",
        False,
        Response(503, fields(b"r2"), True, 0),
    ),
    (
        "no reason phrase",
        b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n",
        False,
        Response(200, fields(), True, 0),
    ),
    (
        "no space after the code",
        b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n",
        False,
        Response(404, fields(), True, 0),
    ),
    (
        "tabs, empty values and obs-text",
        b"HTTP/1.1 200 Ok \xe9t\xe9\r\nX-Empty:\r\nX-Tab:\ta\tb\r\nX-Served-By: caf\xe9\r\nContent-Length: 0\r\n\r\n",
        False,
        Response(200, fields(b"caf\xe9"), True, 0),
    ),
    (
        "a field that ends like a wanted one",
        b"HTTP/1.1 200 OK\r\nNot-X-Served-By: no\r\nX-Served-By-Not: no\r\nContent-Length: 0\r\n\r\n",
        False,
        Response(200, fields(), True, 0),
    ),
    (
        "a value that looks like a field",
        b"HTTP/1.1 200 OK\r\nX-Note: Content-Length: 99\r\nContent-Length: 1\r\n\r\nx",
        False,
        Response(200, fields(), True, 1),
    ),
]

# (id, bytes, whether the server then closes, the error message expected)
BAD: list[tuple[str, bytes, bool, str]] = [
    ("not http", b"SSH-2.0-OpenSSH_9.2\r\n\r\n", False, "status line"),
    ("http/2", b"HTTP/2 200 OK\r\n\r\n", False, "status line"),
    ("lower-case version", b"http/1.1 200 OK\r\n\r\n", False, "status line"),
    ("two-digit status", b"HTTP/1.1 20 OK\r\n\r\n", False, "status line"),
    ("four-digit status", b"HTTP/1.1 2000 OK\r\n\r\n", False, "status line"),
    ("status 600", b"HTTP/1.1 600 Nope\r\n\r\n", False, "status line"),
    ("status 099", b"HTTP/1.1 099 Nope\r\n\r\n", False, "status line"),
    ("two spaces", b"HTTP/1.1  200 OK\r\n\r\n", False, "status line"),
    ("empty head", b"\r\n\r\n", False, "status line"),
    ("leading blank line", b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False, "status line"),
    ("control in reason", b"HTTP/1.1 200 O\x00K\r\nContent-Length: 0\r\n\r\n", False, "status line"),
    ("switching protocols", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n", False, "101"),
    ("field without colon", b"HTTP/1.1 200 OK\r\nContent-Length 0\r\n\r\n", False, "field line"),
    ("space before colon", b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n", False, "field line"),
    ("empty name", b"HTTP/1.1 200 OK\r\n: 0\r\nContent-Length: 0\r\n\r\n", False, "field line"),
    ("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n", False, "field line"),
    ("bare LF", b"HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 0\r\n\r\n", False, "field line"),
    ("bare CR", b"HTTP/1.1 200 OK\r\nX-A: 1\rContent-Length: 0\r\n\r\n", False, "field line"),
    ("NUL in a value", b"HTTP/1.1 200 OK\r\nX-A: \x00\r\nContent-Length: 0\r\n\r\n", False, "field line"),
    ("DEL in a name", b"HTTP/1.1 200 OK\r\nX\x7fA: 1\r\nContent-Length: 0\r\n\r\n", False, "field line"),
    ("LF line ends", b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", True, "LF"),
    ("plus sign", b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", False, "Content-Length"),
    ("minus sign", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", False, "Content-Length"),
    ("hex length", b"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\nhello", False, "Content-Length"),
    ("decimal point", b"HTTP/1.1 200 OK\r\nContent-Length: 5.0\r\n\r\nhello", False, "Content-Length"),
    ("space inside", b"HTTP/1.1 200 OK\r\nContent-Length: 5 5\r\n\r\nhello", False, "Content-Length"),
    ("empty length", b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n", False, "Content-Length"),
    ("arabic digit", b"HTTP/1.1 200 OK\r\nContent-Length: \xd9\xa1\r\n\r\nx", False, "Content-Length"),
    ("19 digits", b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000000000\r\n\r\n", False, "Content-Length"),
    (
        "4300 digits",
        b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 4300 + b"\r\n\r\n",
        False,
        "Content-Length",
    ),
    ("conflicting fields", CL5 + b"Content-Length: 6\r\n\r\nhello!", False, "conflicting"),
    ("conflicting list", b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!", False, "conflicting"),
    ("list with a hole", b"HTTP/1.1 200 OK\r\nContent-Length: 5,\r\n\r\nhello", False, "conflicting"),
    (
        "length beside transfer-encoding",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"hello"),
        False,
        "both",
    ),
    (
        "transfer-encoding in HTTP/1.0",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"hello"),
        False,
        "HTTP/1.0",
    ),
    (
        "chunked twice",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n" + chunked(b"hello"),
        False,
        "twice",
    ),
    (
        "0x in a chunk size",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        False,
        "chunk size",
    ),
    (
        "signed chunk size",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n",
        False,
        "chunk size",
    ),
    (
        "negative chunk size",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        False,
        "chunk size",
    ),
    (
        "space before a size",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n",
        False,
        "chunk size",
    ),
    (
        "space after a size",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
        False,
        "chunk size",
    ),
    (
        "empty chunk size",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n",
        False,
        "chunk size",
    ),
    (
        "not hex",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\ng\r\nhello\r\n0\r\n\r\n",
        False,
        "chunk size",
    ),
    (
        "17 hex digits",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 17 + b"\r\nhello\r\n0\r\n\r\n",
        False,
        "chunk size",
    ),
    (
        "control in an extension",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\x01\r\nhello\r\n0\r\n\r\n",
        False,
        "chunk size",
    ),
    (
        "chunk longer than its size",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello!\r\n0\r\n\r\n",
        False,
        "CRLF",
    ),
    (
        "LF after chunk data",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n",
        False,
        "CRLF",
    ),
    (
        "CR then not LF after chunk data",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\rX0\r\n\r\n",
        False,
        "CRLF",
    ),
    (
        "bad trailer line",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nno colon here\r\n\r\n",
        False,
        "trailer",
    ),
    ("a byte too many", CL5 + b"\r\nhello!", False, "after the end"),
    ("a body after 204", b"HTTP/1.1 204 No Content\r\n\r\nhello", False, "after the end"),
    (
        "a body after 304",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello",
        False,
        "after the end",
    ),
    (
        "bytes after the last chunk",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"hello") + b"HTTP/1.1",
        False,
        "after the end",
    ),
    (
        "two responses at once",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        False,
        "after the end",
    ),
    ("closed in the head", b"HTTP/1.1 200 OK\r\nContent-Len", True, "closed"),
    ("closed in the body", CL5 + b"\r\nhell", True, "closed"),
    ("closed in a chunk", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", True, "closed"),
    ("closed after an interim response", b"HTTP/1.1 100 Continue\r\n\r\n", True, "closed"),
    (
        "closed before the last CRLF",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"hello")[:-1],
        True,
        "closed",
    ),
]


def run(pieces: Sequence[bytes], eof: bool) -> tuple[str, object]:
    """Feed `pieces` to a new parser, then the close if `eof`: ("ok", the Response), ("none",
    None) when no response came, or ("error", the ProtocolError's message)."""
    parser = ResponseParser(WANTED)
    got: list[Response] = []
    try:
        for piece in pieces:
            response = parser.feed(piece)
            if response is not None:
                got.append(response)
        if eof:
            response = parser.feed_eof()
            if response is not None:
                got.append(response)
    except ProtocolError as e:
        return "error", str(e)
    assert len(got) <= 1, "one response was fed, so at most one comes out"
    return ("ok", got[0]) if got else ("none", None)


def splits(data: bytes) -> Iterator[list[bytes]]:
    """The bytes whole, split in two at every position, and one byte at a time."""
    yield [data]
    for i in range(len(data) + 1):
        yield [data[:i], data[i:]]
    yield [data[i : i + 1] for i in range(len(data))]


@pytest.mark.parametrize(("data", "eof", "expected"), [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_good_responses_however_they_are_split(data: bytes, eof: bool, expected: Response) -> None:
    for pieces in splits(data):
        assert run(pieces, eof) == ("ok", expected), pieces


@pytest.mark.parametrize(("data", "eof", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_responses_fail_however_they_are_split(data: bytes, eof: bool, message: str) -> None:
    for pieces in splits(data):
        outcome, detail = run(pieces, eof)
        assert outcome == "error", pieces
        # Garbage is refused as soon as it is seen, so a split can change which check says so;
        # the whole response, though, always gets the precise message.
        if len(pieces) == 1 or message in {"after the end", "closed", "conflicting", "CRLF"}:
            assert message in str(detail), (pieces, detail)


def test_a_close_cut_short_is_an_incomplete_response() -> None:
    parser = ResponseParser()
    assert parser.feed(CL5 + b"\r\nhel") is None
    with pytest.raises(IncompleteResponse):
        parser.feed_eof()


def test_a_close_between_responses_is_no_response() -> None:
    parser = ResponseParser()
    assert parser.feed_eof() is None  # nothing had arrived
    assert parser.feed(CL5 + b"\r\nhello") is not None
    assert parser.feed_eof() is None  # a keep-alive connection closed while idle
    parser.reset()
    assert parser.feed_eof() is None  # ... or just as the next request went out


def test_responses_follow_each_other_on_one_connection() -> None:
    parser = ResponseParser(WANTED)
    statuses: list[tuple[int, bytes, int]] = []
    for data in (
        CL5 + b"X-Served-By: r1\r\n\r\nhello",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"ab", b"c"),
        b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nX-Served-By: r2\r\n\r\n",
    ):
        parser.reset()  # a request went out
        assert not parser.started
        assert parser.feed(data[:7]) is None
        assert parser.started
        response = parser.feed(data[7:])
        assert response is not None
        statuses.append((response.status, response.fields[b"x-served-by"], response.body_length))
    assert statuses == [(200, b"r1", 5), (204, b"", 0), (200, b"", 3), (503, b"r2", 0)]


def test_after_an_error_only_a_reset_helps() -> None:
    parser = ResponseParser()
    with pytest.raises(ProtocolError):
        parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
    with pytest.raises(ProtocolError, match="reset"):
        parser.feed(CL5 + b"\r\nhello")
    with pytest.raises(ProtocolError, match="reset"):
        parser.feed_eof()
    parser.reset()
    assert parser.feed(CL5 + b"\r\nhello") == Response(200, {}, True, 5)


def test_reset_forgets_a_half_read_response() -> None:
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\nContent-") is None
    parser.reset()
    assert not parser.started
    assert parser.feed(CL5 + b"\r\nhello") == Response(200, {}, True, 5)


def test_heads_seen_before_give_the_same_answer() -> None:
    """Heads are memoized: the same head read by parsers that keep different fields."""
    data = CL5 + b"X-Served-By: r1\r\nX-Upstream-Addr: a\r\n\r\nhello"
    served, upstream, neither = (
        ResponseParser(["X-Served-By"]),
        ResponseParser(["x-upstream-addr"]),
        ResponseParser(),
    )
    for _ in range(2):
        for parser in (served, upstream, neither):
            parser.reset()
        assert served.feed(data) == Response(200, {b"x-served-by": b"r1"}, True, 5)
        assert upstream.feed(data) == Response(200, {b"x-upstream-addr": b"a"}, True, 5)
        response = neither.feed(data)
        assert response == Response(200, {}, True, 5)
    assert response is not None
    with pytest.raises(TypeError):
        response.fields[b"x"] = b"y"  # type: ignore[index]  # shared by every response with that head


def test_wanted_field_names_must_be_tokens() -> None:
    with pytest.raises(ValueError, match="field name"):
        ResponseParser(["X Served"])


# -- the limits, at the byte where they start to bite -------------------------------------------


def head_of(size: int) -> bytes:
    """A head (status line and fields, without the blank line) of exactly `size` bytes."""
    start = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Pad: "
    return start + b"p" * (size - len(start))


@pytest.mark.parametrize(("size", "ok"), [(http_parser.MAX_HEAD, True), (http_parser.MAX_HEAD + 1, False)])
def test_head_limit(size: int, ok: bool) -> None:
    data = head_of(size) + b"\r\n\r\n"
    for pieces in (
        [data],
        [data[:-1], data[-1:]],
        [data[:-3], data[-3:]],
        [data[: size // 2], data[size // 2 :]],
    ):
        outcome, detail = run(pieces, eof=False)
        assert outcome == ("ok" if ok else "error"), detail
        if not ok:
            assert "longer than" in str(detail)


@pytest.fixture
def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Limits small enough to split a response at every byte around them."""
    monkeypatch.setattr(http_parser, "MAX_HEAD", 60)
    monkeypatch.setattr(http_parser, "MAX_CHUNK_LINE", 12)
    monkeypatch.setattr(http_parser, "MAX_TRAILER", 30)


@pytest.mark.usefixtures("small_limits")
@pytest.mark.parametrize(
    ("data", "ok"),
    [
        (head_of(60) + b"\r\n\r\n", True),
        (head_of(61) + b"\r\n\r\n", False),
        (head_of(61), False),  # never ends: refused without waiting for the end
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;abcdefghij\r\nx\r\n0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;abcdefghijk\r\nx\r\n0\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;abcdefghijk", False),
        # The trailer section: 30 bytes with its blank line, then 31 (also when it has not ended)
        (CHUNKED_HEAD + b"0\r\nA: 12345678\r\nB: 1234567890\r\n\r\n", True),
        (CHUNKED_HEAD + b"0\r\nA: 12345678\r\nB: 12345678901\r\n\r\n", False),
        (CHUNKED_HEAD + b"0\r\nA: 12345678\r\nB: 12345678901", False),
        (CHUNKED_HEAD + b"0\r\n" + b"A" * 27 + b":\r\n\r\n", False),
    ],
)
def test_limits_however_the_bytes_are_split(data: bytes, ok: bool) -> None:
    for pieces in splits(data):
        outcome, detail = run(pieces, eof=False)
        if ok:
            assert outcome == "ok", (pieces, detail)
        else:
            assert outcome == "error" and "longer than" in str(detail), (pieces, outcome, detail)


def test_a_large_body_is_not_kept() -> None:
    parser = ResponseParser()
    size = 10_000_000
    assert parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size) is None
    block = b"x" * 65536
    for _ in range(size // len(block)):
        assert parser.feed(block) is None
        assert len(parser._buf) == 0  # nothing of the body is buffered
    response = parser.feed(block[: size % len(block)])
    assert response is not None and response.body_length == size


# -- fuzzing: whatever the bytes, a Response, None or a ProtocolError ----------------------------

SEEDS = [g[1] for g in GOOD] + [b[1] for b in BAD]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A response from the tables with a few bytes flipped, inserted, deleted or repeated."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "repeat"]))
        if op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(
                st.sampled_from([b"\r", b"\n", b"\r\n", b":", b" ", b",", b";", b"0", b"\x00", b"\xff"])
            )
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 4))]
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 40))]
    return bytes(data)


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def outcome_kind(pieces: Sequence[bytes], eof: bool) -> tuple[str, object]:
    """Like `run`, but an error is only "error": where garbage is noticed may move with a split."""
    kind, detail = run(pieces, eof)
    return (kind, None) if kind == "error" else (kind, detail)


# LAB_FUZZ_EXAMPLES=20000 for a longer campaign; the deadline is what "never hangs" means here.
FUZZ = settings(
    max_examples=int(os.environ.get("LAB_FUZZ_EXAMPLES", "300")),
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=6), eof=st.booleans())
def test_random_bytes_never_break_the_parser(data: bytes, cuts: list[int], eof: bool) -> None:
    run(cut(data, cuts), eof)  # anything but a ProtocolError escapes and fails the test


@FUZZ
@given(data=mutated(), cuts=st.lists(st.integers(0, 10_000), max_size=6), eof=st.booleans())
def test_mutated_responses_give_the_same_outcome_however_split(
    data: bytes, cuts: list[int], eof: bool
) -> None:
    assert outcome_kind(cut(data, cuts), eof) == outcome_kind([data], eof)


@st.composite
def generated(draw: st.DrawFn) -> tuple[bytes, Response]:
    """A well-formed response with random fields, framing and body, and what it must parse to."""
    status = draw(st.sampled_from([200, 201, 301, 404, 500, 503]))
    name = draw(st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)).encode()
    body = draw(st.binary(max_size=300))
    head = [b"HTTP/1.1 %d Whatever" % status, b"X-Served-By: " + name]
    for _ in range(draw(st.integers(0, 5))):
        head.append(
            b"X-Other-%d: %s" % (draw(st.integers(0, 99)), draw(st.binary(max_size=20)).translate(_PRINTABLE))
        )
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    if framing == "length":
        head.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing == "chunked":
        head.append(b"Transfer-Encoding: chunked")
        sizes = draw(st.lists(st.integers(1, 50), max_size=10))
        chunks, at = [], 0
        for size in sizes:
            chunks.append(body[at : at + size])
            at += size
        chunks.append(body[at:])
        payload = chunked(*[c for c in chunks if c])
    else:
        payload = body
    others = head[1:]
    draw(st.randoms()).shuffle(others)  # field order does not matter
    head = head[:1] + others
    data = b"\r\n".join(head) + b"\r\n\r\n" + payload
    expected = Response(status, fields(name), framing != "close", len(body), body)
    return data, expected


_PRINTABLE = bytes(32 + i % 95 for i in range(256))  # a translation table: any byte -> a printable one


@FUZZ
@given(case=generated(), cuts=st.lists(st.integers(0, 10_000), max_size=6))
def test_generated_responses_parse_exactly(case: tuple[bytes, Response], cuts: list[int]) -> None:
    data, expected = case
    eof = not expected.keep_alive
    assert run(cut(data, cuts), eof) == ("ok", expected._replace(body=b""))
    if expected.keep_alive:
        assert run([data + b"!"], eof=False)[0] == "error"  # a stray byte after the end


# -- keeping the content (`keep_body`) -----------------------------------------------------------


def kept(pieces: Sequence[bytes], eof: bool, keep: int) -> Response:
    parser = ResponseParser(WANTED, keep_body=keep)
    got = [r for r in (parser.feed(p) for p in pieces) if r is not None]
    if eof:
        last = parser.feed_eof()
        got += [last] if last is not None else []
    assert len(got) == 1
    return got[0]


@pytest.mark.parametrize(("data", "eof", "expected"), [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_kept_content_is_the_same_however_split(data: bytes, eof: bool, expected: Response) -> None:
    whole = kept([data], eof, 1000)
    assert whole._replace(body=b"") == expected  # keeping changes nothing else
    assert len(whole.body) == expected.body_length
    for pieces in splits(data):
        assert kept(pieces, eof, 1000) == whole, pieces
        assert kept(pieces, eof, 3).body == whole.body[:3], pieces


def test_content_is_kept_only_when_asked_and_only_up_to_the_limit() -> None:
    data = CL5 + b"\r\nhello"
    assert ResponseParser().feed(data) == Response(200, {}, True, 5, b"")
    assert ResponseParser(keep_body=2).feed(data) == Response(200, {}, True, 5, b"he")
    assert ResponseParser(keep_body=5).feed(data) == Response(200, {}, True, 5, b"hello")
    with pytest.raises(ValueError, match="keep_body"):
        ResponseParser(keep_body=-1)


def test_kept_content_is_per_response() -> None:
    parser = ResponseParser(keep_body=100)
    first = parser.feed(CHUNKED_HEAD + chunked(b"ab", b"c"))
    parser.reset()
    assert parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nxy") is not None
    parser.reset()
    assert parser.feed(CL5 + b"\r\nhel") is None
    parser.reset()  # a half-read response is forgotten with its content
    second = parser.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert first is not None and first.body == b"abc"
    assert second is not None and second.body == b""


@FUZZ
@given(
    case=generated(),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
    keep=st.integers(1, 400),
)
def test_generated_responses_keep_their_content_exactly(
    case: tuple[bytes, Response], cuts: list[int], keep: int
) -> None:
    data, expected = case
    response = kept(cut(data, cuts), not expected.keep_alive, keep)
    assert response.body == expected.body[:keep]
