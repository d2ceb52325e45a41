"""Probe a running nydus-exporter daemon through the standard gRPC health service.

Used by the image's ``HEALTHCHECK`` and by the Kubernetes readiness probe
(``deploy/kubernetes/deployment.yaml``). It asks ``grpc.health.v1.Health/Check`` for the
service ``nydus.exporter.v1.Exporter`` (the name the daemon registers besides ``""``) and exits

* 0 when the answer is ``SERVING``,
* 1 for any other answer (``NOT_SERVING`` while the daemon drains after SIGTERM), for an RPC
  error (socket missing, daemon not up yet, timeout) or for a bad address.

It checks the gRPC server itself, not just the process: a daemon whose event loop is wedged
does not answer within ``--timeout``. Only ``grpcio`` and ``grpcio-health-checking`` are
needed, both dependencies of the daemon, so it runs with the image's own Python.

Usage::

    python healthcheck.py [--addr unix:///run/nydus-exporter/exporter.sock | tcp://HOST:PORT]
                          [--service nydus.exporter.v1.Exporter] [--timeout 5]

``--addr`` defaults to ``$NYDUS_EXPORTER_HEALTH_ADDR``, then to the image's socket. TLS
listeners are not probed by this script; probe their unix socket instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

DEFAULT_ADDR = "unix:///run/nydus-exporter/exporter.sock"
DEFAULT_SERVICE = "nydus.exporter.v1.Exporter"


def grpc_target(address: str) -> str:
    """The daemon's ``unix:///PATH`` / ``tcp://HOST:PORT`` spelling -> a gRPC channel target."""
    if address.startswith("unix://"):
        path = address.removeprefix("unix://")
        if not path.startswith("/"):
            raise ValueError(f"{address!r}: a unix address needs an absolute path (unix:///PATH)")
        return f"unix://{path}"
    if address.startswith("tcp://"):
        hostport = address.removeprefix("tcp://")
        host, sep, port = hostport.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{address!r}: expected tcp://HOST:PORT")
        if host in ("0.0.0.0", "[::]", "::"):
            host = "127.0.0.1"  # a wildcard listener is reachable on loopback
        return f"{host}:{port}"
    raise ValueError(f"{address!r}: expected unix:///PATH or tcp://HOST:PORT")


def check(address: str, service: str, timeout: float) -> tuple[bool, str]:
    """(serving, human-readable status) of ``service`` at ``address``."""
    import grpc  # imported here so that --help works without grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        target = grpc_target(address)
    except ValueError as exc:
        return False, str(exc)
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            name = code.name if code is not None else "UNKNOWN"
            details = exc.details() if hasattr(exc, "details") else str(exc)
            return False, f"{name}: {details}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gRPC health check of a nydus-exporter daemon")
    parser.add_argument(
        "--addr",
        default=os.environ.get("NYDUS_EXPORTER_HEALTH_ADDR") or DEFAULT_ADDR,
        help="unix:///PATH or tcp://HOST:PORT (default: $NYDUS_EXPORTER_HEALTH_ADDR or %(default)s)",
    )
    parser.add_argument(
        "--service", default=DEFAULT_SERVICE, help="health service name (default %(default)s)"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    serving, status = check(args.addr, args.service, args.timeout)
    print(f"{args.service} at {args.addr}: {status}", file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
