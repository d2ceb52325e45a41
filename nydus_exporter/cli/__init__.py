"""The ``nydus-exporter`` command line: every argparse parser and every printer.

* :mod:`.main` — the parser, ``main()`` (the console entry point), ``pack``, ``export``, ``inspect``;
* :mod:`.options` — ``--output type=nydus,...`` text into output keys;
* :mod:`.daemon` — ``serve`` and ``export --addr`` (the daemon's client side);
* :mod:`.tools` — ``check``, ``unpack``, ``cat``, ``mount``, ``umount``;
* :mod:`.chunkstore` — ``chunkdict push`` and ``gc``;
* :mod:`.progress`, :mod:`.remote_progress` — progress printers (in-process, and over the daemon).

Nothing outside this package imports it.
"""
