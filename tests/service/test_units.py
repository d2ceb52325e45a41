"""Pieces of the daemon without a server: config sources, auth round trip, error mapping, proto."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from pathlib import Path

import grpc
import pytest

from nydus_exporter.api import exporter_pb2 as pb
from nydus_exporter.client.exporter import answer_auth
from nydus_exporter.errors import ConfigError, RegistryAuthError, RegistryError, RegistryUnavailableError
from nydus_exporter.registry.auth import Challenge
from nydus_exporter.registry.credentials import Credentials, DockerConfigCredentials
from nydus_exporter.service.auth_broker import AuthBroker
from nydus_exporter.service.config import load_config, redacted
from nydus_exporter.service.errors import IdempotencyConflictError, JobCancelledError, ProtocolError
from nydus_exporter.service.events import AuthAnswer, AuthChallenge, Event
from nydus_exporter.service.servicer import auth_answer, status_for
from scripts.gen_proto import GENERATED, generate
from tests.conftest import PROJECT_ROOT, require


def test_config_precedence_file_env_flags(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(
        'state_dir = "/srv/state"\nmax_concurrent_exports = 3\njob_ttl = 60\n'
        'allowed_roots = ["/a", "/b"]\nlisten = ["tcp://0.0.0.0:7070"]\n'
    )
    env = {"NYDUS_EXPORTER_MAX_CONCURRENT_EXPORTS": "5", "NYDUS_EXPORTER_USE_DOCKER_CONFIG": "true"}
    config = load_config(file=toml, env=env, overrides={"job_ttl": 30.0, "state_dir": None})
    assert config.state_dir == Path("/srv/state")  # file (flag unset)
    assert config.max_concurrent_exports == 5  # env beats file
    assert config.job_ttl == 30.0  # flag beats file
    assert config.allowed_roots == (Path("/a"), Path("/b"))
    assert config.use_docker_config is True
    assert redacted(config)["listen"] == ["tcp://0.0.0.0:7070"]
    default = load_config(env={})
    assert default.listen_addresses == (f"unix://{default.state_dir / 'exporter.sock'}",)


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("bogus = 1\n", {}, "unknown key 'bogus'"),
        ("", {"NYDUS_EXPORTER_JOB_TTL": "soon"}, "job_ttl='soon'"),
        ("", {"NYDUS_EXPORTER_MAX_CONCURRENT_EXPORTS": "0"}, "max_concurrent_exports must be at least 1"),
        ('listen = ["http://x"]\n', {}, "expected unix:///PATH or tcp://HOST:PORT"),
        ('tls_cert = "/c.pem"\n', {}, "tls_cert and tls_key go together"),
    ],
)
def test_bad_config_names_the_problem(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(file=toml, env=env)


async def test_auth_request_round_trip_with_a_fake_provider_call() -> None:
    """The registry client's credential_provider hook -> auth_request -> auth_reply -> Credentials."""
    sent: list[Event] = []
    broker: AuthBroker

    async def emit(event: Event) -> None:
        sent.append(event)
        assert isinstance(event, AuthChallenge)
        # The client answers on the stream; the servicer turns the reply into an AuthAnswer.
        reply = pb.AuthReply(
            request_id=event.request_id, basic=pb.BasicCredentials(username="u", secret="s3cret")
        )
        broker.answer(auth_answer(reply))

    broker = AuthBroker(emit)
    challenge = Challenge(
        "bearer", {"realm": "https://auth.example/token", "scope": "repository:a/b:pull,push"}
    )
    creds = await broker.credential_provider("registry.example", challenge)
    assert creds == Credentials(username="u", password="s3cret")
    request = sent[0]
    assert isinstance(request, AuthChallenge)
    assert request.host == "registry.example" and request.scopes == ("repository:a/b:pull,push",)
    assert request.www_authenticate[0].startswith('Bearer realm="https://auth.example/token"')
    assert "s3cret" not in repr(creds)
    # Unknown or repeated replies are protocol errors; an error reply means "no credentials".
    with pytest.raises(ProtocolError, match="unknown request_id"):
        broker.answer(AuthAnswer(request.request_id, username="late"))

    async def refuse(event: Event) -> None:
        assert isinstance(event, AuthChallenge)
        broker.answer(AuthAnswer(event.request_id, error="no credentials"))

    broker = AuthBroker(refuse)
    assert await broker.credential_provider("registry.example", None) is None

    async def bearer(event: Event) -> None:
        assert isinstance(event, AuthChallenge)
        broker.answer(AuthAnswer(event.request_id, authorization="Bearer tok"))

    broker = AuthBroker(bearer)
    assert await broker.credential_provider("h", None) == Credentials(registry_token="tok")


async def test_client_answers_auth_requests_from_its_docker_config(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    auth = base64.b64encode(b"alice:pw").decode()
    config.write_text(json.dumps({"auths": {"registry.example": {"auth": auth}}}))
    store = DockerConfigCredentials(config)
    request = pb.AuthRequest(request_id="r1", host="registry.example", www_authenticate=['Basic realm="x"'])
    reply = await answer_auth(request, store)
    assert reply.request_id == "r1" and reply.basic.username == "alice" and reply.basic.secret == "pw"
    other = await answer_auth(pb.AuthRequest(request_id="r2", host="elsewhere.example"), store)
    assert other.WhichOneof("answer") == "error"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ProtocolError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (ConfigError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (IdempotencyConflictError("x"), grpc.StatusCode.ABORTED),
        (JobCancelledError("x"), grpc.StatusCode.CANCELLED),
        (asyncio.CancelledError(), grpc.StatusCode.CANCELLED),
        (RegistryAuthError("x", status=401), grpc.StatusCode.UNAUTHENTICATED),
        (RegistryAuthError("x", status=403), grpc.StatusCode.PERMISSION_DENIED),
        (RegistryUnavailableError("x", status=503), grpc.StatusCode.UNAVAILABLE),
        (RegistryError("x", status=400), grpc.StatusCode.FAILED_PRECONDITION),
        (OSError(28, "No space left on device"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (KeyError("bug"), grpc.StatusCode.INTERNAL),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_status_mapping(error: BaseException, code: grpc.StatusCode) -> None:
    assert status_for(error)[0] == code


def test_generated_modules_match_the_proto(tmp_path: Path) -> None:
    require(
        shutil.which("protoc-gen-mypy") is not None
        or (Path(PROJECT_ROOT) / ".venv/bin/protoc-gen-mypy").exists(),
        "needs mypy-protobuf (protoc-gen-mypy)",
    )
    generate(PROJECT_ROOT / "proto", tmp_path)
    api = PROJECT_ROOT / "nydus_exporter" / "api"
    for name in GENERATED:
        assert (tmp_path / name).read_bytes() == (api / name).read_bytes(), (
            f"nydus_exporter/api/{name} is stale: run python scripts/gen_proto.py"
        )
