"""OCI image shaping and OCI image layout I/O (no registry I/O here).

Modules (import them directly; this package re-exports nothing so importing it stays cheap):

* :mod:`.mediatypes` — media types, artifact types, annotation keys, predicates;
* :mod:`.descriptor` — ``Descriptor``, digests, ``Blob`` (raw bytes + digest), canonical JSON,
  ``ImageManifest`` / ``ImageIndex`` parse views;
* :mod:`.platform` — ``Platform`` parsing, normalisation, matching;
* :mod:`.reference` — image reference parsing (distribution grammar, docker.io defaults);
* :mod:`.nydus_image` — the Nydus config / manifest / merged index ([format §6]) and detection;
* :mod:`.bootstrap_layer` — the bootstrap layer tar.gz writer and reader ([format §6.3]);
* :mod:`.layout` — the OCI image layout directory (``OciLayout``);
* :mod:`.archive` — OCI layout tars and ``docker save`` tars.
"""
