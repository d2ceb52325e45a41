"""What a job tells its client, as plain values (the servicer turns them into ExportEvents).

Domain code (jobs, intake, worker runner) emits these; only ``servicer`` knows protobuf.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Accepted:
    job_id: str
    resumed: bool


@dataclass(frozen=True)
class LayerWants:
    platform_id: str
    indices: tuple[int, ...]


@dataclass(frozen=True)
class ProgressRow:
    """One BuildKit progress row (``progress.Status``): timestamps are Unix seconds."""

    id: str
    action: str
    current: int = 0
    total: int = 0
    started: float | None = None
    completed: float | None = None


@dataclass(frozen=True)
class LogLine:
    stream: int  # 1 stdout, 2 stderr
    data: bytes


@dataclass(frozen=True)
class WarningEvent:
    short: str
    detail: tuple[bytes, ...] = ()
    level: int = 1
    url: str = ""


@dataclass(frozen=True)
class AuthChallenge:
    """The registry answered 401; the client is asked for credentials ([contract §4.2] option 2)."""

    request_id: str
    host: str
    www_authenticate: tuple[str, ...]
    scopes: tuple[str, ...] = ()
    method: str = ""
    url: str = ""
    repository: str = ""
    push: bool = True


@dataclass(frozen=True)
class DescriptorValue:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JobResult:
    response: Mapping[str, str]
    root: DescriptorValue
    finalize_token: str = ""
    warnings: tuple[str, ...] = ()
    root_content: bytes = b""  # the root's bytes (for a shim's build history)


Event = Accepted | LayerWants | ProgressRow | LogLine | WarningEvent | AuthChallenge | JobResult
Emit = Callable[[Event], Awaitable[None]]


@dataclass(frozen=True)
class AuthAnswer:
    """A client's auth_reply (never logged: it carries secrets)."""

    request_id: str
    authorization: str = field(default="", repr=False)
    username: str = ""
    secret: str = field(default="", repr=False)
    error: str = ""
