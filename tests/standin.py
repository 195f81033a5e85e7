"""A scripted stand-in load balancer for tests: a tiny HTTP server on 127.0.0.1 that answers every
GET with `X-Served-By` (and `X-Upstream-Addr`) chosen by a fixed rule, and writes an access log
in the lab's nginx format, so `lab verify` can be run end to end without Docker.

    with StandIn(cycle(["web-1", "web-2"])) as lb:
        run `lab verify --url {lb.url}` or verifier.verify(verifier.url_target(lb.url), ...)
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Answer:
    """What the stand-in answers one request with."""

    replica: str  # X-Served-By; "" sends none
    delay: float = 0.0  # seconds to wait before answering
    status: int = 200
    logged_as: str | None = None  # the replica the access log names (None: the one that answered)


Rule = Callable[[int, Mapping[str, str]], Answer]  # (request number from 0, request headers) -> answer


def address(replica: str) -> str:
    """A stable made-up upstream address per replica name (what nginx's $upstream_addr would be)."""
    return f"10.9.0.{sum(replica.encode()) % 250 + 2}:80" if replica else "-"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default listen backlog of 5 drops SYNs under load: 1 s stalls


class StandIn:
    """Serves `rule` on an ephemeral loopback port while the `with` block runs."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.count = 0
        self.lock = threading.Lock()
        self.log: list[str] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else every answer waits ~40 ms for a delayed ACK

            def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
                with stand_in.lock:
                    n = stand_in.count
                    stand_in.count += 1
                answer = stand_in.rule(n, {k.lower(): v for k, v in self.headers.items()})
                if answer.delay:
                    time.sleep(answer.delay)
                body = b"<h1>stand-in</h1>\n"
                self.send_response(answer.status)
                if answer.replica:
                    self.send_header("X-Served-By", answer.replica)
                    self.send_header("X-Upstream-Addr", address(answer.replica))
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                logged = answer.logged_as if answer.logged_as is not None else answer.replica
                line = (
                    f'127.0.0.1 [-] "GET / HTTP/1.1" {answer.status} {len(body)} upstream={address(logged)} '
                    f"upstream_status={answer.status} request_time=0.000 upstream_time=0.000 "
                    f'client="{self.headers.get("X-Client-Id", "")}" run="{self.headers.get("X-Lab-Run", "")}"'
                )
                with stand_in.lock:
                    stand_in.log.append(line)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="stand-in", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def log_lines(self, _since: float = 0.0) -> list[str]:
        """The access log so far (the `since` of a real log reader is ignored: it is all this run)."""
        with self.lock:
            return list(self.log)

    def __enter__(self) -> StandIn:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


# Rules -----------------------------------------------------------------------------------------
def cycle(pattern: Sequence[str], delays: Mapping[str, float] | None = None) -> Rule:
    """Request i goes to pattern[i % len(pattern)] (a round robin when the pattern lists each once)."""
    slow = dict(delays or {})
    return lambda i, _headers: Answer(pattern[i % len(pattern)], slow.get(pattern[i % len(pattern)], 0.0))


def spread(counts: Mapping[str, int], *, seed: int = 1, delays: Mapping[str, float] | None = None) -> Rule:
    """Exactly counts[r] of the first sum(counts) requests to each replica, in a seeded shuffled order
    (then round robin over the same order)."""
    order = [r for r, n in counts.items() for _ in range(n)]
    random.Random(seed).shuffle(order)
    return cycle(order, delays)


def uniform(replicas: Sequence[str], *, seed: int = 1) -> Rule:
    """Each request to a replica drawn uniformly at random (seeded)."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def rule(_i: int, _headers: Mapping[str, str]) -> Answer:
        with lock:
            return Answer(rng.choice(list(replicas)))

    return rule


def by_client(replicas: Sequence[str]) -> Rule:
    """A sticky hash: each X-Client-Id always to the same replica (one replica without one)."""
    return lambda _i, headers: Answer(replicas[sum(headers.get("x-client-id", "").encode()) % len(replicas)])


def mislogged(rule: Rule, every: int, as_replica: str) -> Rule:
    """`rule`, but every `every`-th request is logged as served by `as_replica`."""

    def wrapped(i: int, headers: Mapping[str, str]) -> Answer:
        answer = rule(i, headers)
        if i % every == every - 1:
            return Answer(answer.replica, answer.delay, answer.status, as_replica)
        return answer

    return wrapped


def running(rule: Rule) -> Iterator[StandIn]:
    """A stand-in for a pytest fixture: started, yielded, stopped."""
    with StandIn(rule) as stand_in:
        yield stand_in
