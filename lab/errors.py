"""The errors a user can cause or meet; each says what went wrong in one line."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit statuses of the `lab` command."""

    OK = 0
    FAILED = 1  # the lab could not do what was asked (build failed, lab not ready, ...)
    USAGE = 2  # bad input on the command line
    NO_ENGINE = 3  # no Docker engine answers
    SKEWED = 4  # lab verify: traffic is not spread as expected
    INCONCLUSIVE = 5  # lab verify: the sample cannot judge the spread (too few requests, clients, ...)
    INTERRUPTED = 130


class LabError(Exception):
    """A failure the user should see as one line, not as a traceback."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail  # extra context shown below the one-line message (a log tail)


class InvalidInput(LabError):
    """The command line asks for something impossible; nothing was touched."""

    exit_code = ExitCode.USAGE


class EngineUnavailable(LabError):
    """No Docker engine answers."""

    exit_code = ExitCode.NO_ENGINE


class EngineRefused(LabError):
    """The Docker engine refused a request; the message is the engine's own reason, on one line."""


class BuildFailed(LabError):
    """An image did not build; `detail` holds the tail of the build log."""


class DeployFailed(LabError):
    """A rolling deploy stopped; the previous version serves again."""


class NameInUse(LabError):
    """The engine already has a resource of that name."""


class NotReady(LabError):
    """Containers started but the lab did not come up in time."""


class RegistryError(LabError):
    """A push or pull failed, or the registry cannot be used; the message is the registry's own."""


class SwarmError(LabError):
    """The engine's swarm cannot be used as asked (not in swarm mode, a worker, locked, ...)."""


class Conflict(LabError):
    """Someone else changed the lab meanwhile; nothing was changed (read it again and retry)."""
