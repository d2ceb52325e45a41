"""The exporter daemon: ``nydus.exporter.v1`` over gRPC ([contract §5]).

Modules: ``config`` (TOML + environment + flags), ``attrs`` (an instance's resolved output
keys), ``intake`` (the receiving half of an Export stream), ``cache`` (converted layers),
``worker_spec`` and ``worker`` (the conversion process), ``runner`` (running it), ``publish``
(push and oci-layout), ``auth_broker`` (credentials from the client), ``jobs`` (instances,
jobs, slots, TTL), ``servicer`` (gRPC translation and the one error -> status mapping),
``server`` (lifespan, health, reflection, metrics, signals). The client side lives in
``nydus_exporter.client`` and ``nydus_exporter.cli``: this package holds no client code.
"""
