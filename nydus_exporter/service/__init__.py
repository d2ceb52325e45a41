"""The exporter daemon: ``nydus.exporter.v1`` over gRPC ([contract §5]).

Modules: ``config`` (TOML + environment + flags), ``attrs`` (Resolve's validation), ``intake``
(the receiving half of an Export stream), ``cache`` (converted layers), ``worker`` (the
conversion process), ``jobs`` (instances, jobs, slots, publishing, TTL), ``servicer`` (gRPC
translation and the one error -> status mapping), ``server`` (lifespan, health, reflection,
metrics, signals), ``client`` (the streaming client), ``printer`` (client-side progress).
"""
