"""Start the dashboard: find the lab, bind the port, follow the lab, serve (the only uvicorn user)."""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
import webbrowser
from collections.abc import Callable
from typing import TYPE_CHECKING

import uvicorn

from lab import orchestrator
from lab.dashboard.actions import Runner
from lab.dashboard.app import create_app
from lab.dashboard.security import new_token
from lab.errors import InvalidInput
from lab.livefeed import LiveFeed

if TYPE_CHECKING:
    from lab.docker_ops import Engine

SayFn = Callable[[str], None]


def bind_socket(bind: str, port: int) -> socket.socket:
    """A listening socket on bind:port, or a one-line InvalidInput saying why not."""
    family = socket.AF_INET6 if ipaddress.ip_address(bind).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As any server does: connections in TIME_WAIT don't make a port busy (a listener does).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind, port))
        sock.listen(128)
    except PermissionError:
        sock.close()
        raise InvalidInput(f"port {port} on {bind} needs privileges this user lacks") from None
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise InvalidInput(
                f"port {port} on {bind} is already in use; choose another with --port"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise InvalidInput(
                f"{bind} is not an address of this machine; choose another with --bind"
            ) from None
        raise InvalidInput(f"cannot listen on {bind} port {port}: {exc.strerror}") from None
    return sock


def url_of(bind: str, port: int) -> str:
    address = ipaddress.ip_address(bind)
    host = "127.0.0.1" if address.is_unspecified else (f"[{bind}]" if address.version == 6 else bind)
    return f"http://{host}:{port}/"


def run_dashboard(
    engine: Engine, name: str, *, bind: str, port: int, open_browser: bool = False, say: SayFn = print
) -> None:
    """Serve lab `name`'s dashboard on bind:port until interrupted (KeyboardInterrupt ends it)."""
    orchestrator.find_running(engine, name)  # no such lab, or not running: one line, exit 1
    sock = bind_socket(bind, port)
    try:
        feed = LiveFeed(engine, name).start()
    except BaseException:
        sock.close()
        raise
    try:
        token = new_token()
        runner = Runner(engine, name, feed.note)
        server: uvicorn.Server | None = None
        app = create_app(
            lab=name, state=feed.state, run_action=runner, token=token, bind=bind, port=port,
            stopping=lambda: server is not None and server.should_exit,
        )  # fmt: skip
        url = url_of(bind, port)
        say(f"dashboard of lab {name}: {url}  (Ctrl-C stops it)")
        if not ipaddress.ip_address(bind).is_loopback:
            say(
                f"warning: listening on {bind}: anyone who can reach it can open the page and use its controls"
            )
        if open_browser:
            threading.Timer(0.5, webbrowser.open, args=(url,)).start()
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=2,  # open event streams end within STREAM_EVERY_S of a Ctrl-C
        )
        server = uvicorn.Server(config)
        server.run(sockets=[sock])
    finally:
        feed.close()
        sock.close()
