"""Registry credentials on demand, from the client of the Export stream ([contract §4.2] option 2).

Credentials stay with the client: :class:`AuthBroker` turns a ``credential_provider(host,
challenge)`` call (the registry client's hook) into an ``auth_request`` event and waits for the
matching ``auth_reply``."""

from __future__ import annotations

import asyncio
import base64
import binascii
import uuid

from nydus_exporter.errors import excerpt
from nydus_exporter.registry.auth import Challenge
from nydus_exporter.registry.credentials import Credentials
from nydus_exporter.service.errors import (
    ProtocolError,
)
from nydus_exporter.service.events import (
    AuthAnswer,
    AuthChallenge,
    Emit,
)

_AUTH_TIMEOUT = 60.0  # as BuildKit's session auth helpers ([contract §4.2])


_TOKEN_USERNAME = "<token>"  # docker's marker: the secret is an identity token


class AuthBroker:
    """Registry credentials on demand, from the client of the stream ([contract §4.2] option 2)."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit
        self._pending: dict[str, asyncio.Future[AuthAnswer]] = {}

    async def credential_provider(self, host: str, challenge: Challenge | None) -> Credentials | None:
        """The registry client's ``credential_provider`` hook."""
        request_id = uuid.uuid4().hex
        future: asyncio.Future[AuthAnswer] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        headers: tuple[str, ...] = ()
        if challenge is not None:
            params = ",".join(f'{k}="{v}"' for k, v in challenge.params.items())
            headers = (f"{challenge.scheme.capitalize()} {params}".strip(),)
        try:
            await self._emit(
                AuthChallenge(
                    request_id=request_id,
                    host=host,
                    www_authenticate=headers,
                    scopes=challenge.scopes if challenge is not None else (),
                )
            )
            async with asyncio.timeout(_AUTH_TIMEOUT):
                answer = await future
        finally:
            self._pending.pop(request_id, None)
        return credentials_from_answer(answer)

    def answer(self, answer: AuthAnswer) -> None:
        future = self._pending.get(answer.request_id)
        if future is None or future.done():
            raise ProtocolError(f"auth_reply for unknown request_id {excerpt(answer.request_id)}")
        future.set_result(answer)


def credentials_from_answer(answer: AuthAnswer) -> Credentials | None:
    if answer.error:
        return None
    if answer.authorization:
        scheme, _, value = answer.authorization.partition(" ")
        if scheme.lower() == "bearer" and value:
            return Credentials(registry_token=value.strip())
        if scheme.lower() == "basic" and value:
            try:
                user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise ProtocolError("auth_reply: authorization is not valid Basic credentials") from None
            if sep:
                return Credentials(username=user, password=password)
        raise ProtocolError("auth_reply: authorization must be 'Bearer <token>' or 'Basic <base64>'")
    if answer.username == _TOKEN_USERNAME:
        return Credentials(identity_token=answer.secret)
    if answer.username or answer.secret:
        return Credentials(username=answer.username, password=answer.secret)
    return None
