"""Hand-made Export streams, for protocol tests (malformed, cancelled, interrupted)."""

from __future__ import annotations

import hashlib
from typing import Any

import grpc

from nydus_exporter.api import exporter_pb2 as pb


def header(instance_id: str, platform_ids: tuple[str, ...] = ("p",), **kw: Any) -> pb.ExportRequest:
    platforms = [pb.Platform(id=p, os="linux", architecture="amd64") for p in platform_ids]
    return pb.ExportRequest(header=pb.ExportHeader(instance_id=instance_id, platforms=platforms, **kw))


def begin(platform_id: str, *layers: bytes, digests: list[str] | None = None) -> pb.ExportRequest:
    infos = []
    for i, data in enumerate(layers):
        digest = (digests or [])[i] if digests else "sha256:" + hashlib.sha256(data).hexdigest()
        infos.append(pb.LayerInfo(index=i, blob_digest=digest, size=len(data)))
    return pb.ExportRequest(platform_begin=pb.PlatformBegin(platform_id=platform_id, layers=infos))


def data(platform_id: str, index: int, offset: int, chunk: bytes) -> pb.ExportRequest:
    return pb.ExportRequest(
        layer_data=pb.LayerData(platform_id=platform_id, index=index, offset=offset, data=chunk)
    )


def end(platform_id: str, index: int, digest: str) -> pb.ExportRequest:
    return pb.ExportRequest(layer_end=pb.LayerEnd(platform_id=platform_id, index=index, digest=digest))


def platform_end(platform_id: str) -> pb.ExportRequest:
    return pb.ExportRequest(platform_end=pb.PlatformEnd(platform_id=platform_id))


def commit() -> pb.ExportRequest:
    return pb.ExportRequest(commit=pb.Commit())


def sha(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


async def read_until(call: Any, kind: str) -> pb.ExportEvent:
    """Read events until one of ``kind`` (raises the RPC error if the stream fails)."""
    while True:
        event = await call.read()
        if event is grpc.aio.EOF:
            raise AssertionError(f"stream ended before {kind}")
        if event.WhichOneof("ev") == kind:
            found: pb.ExportEvent = event
            return found
