"""The client side of the exporter daemon: :mod:`.exporter` drives ``nydus.exporter.v1`` as
the BuildKit shim does. The daemon package (``service``) holds no client code."""
