"""The conversion pipeline the CLI and the daemon share: sources in, Nydus images out.

* :mod:`.options` — the one table of output keys and the typed ``ExportOptions``;
* :mod:`.sources` — ``docker://``, ``oci:``, ``oci-archive:``, ``docker-archive:``, ``tar:``, ``dir:``;
* :mod:`.pack` — one layer into one Nydus blob;
* :mod:`.export` — a whole image: convert every layer, merge, write the image, push;
* :mod:`.push` — an OCI layout's image into a registry;
* :mod:`.chunkdict_image` — the chunk store's view of a repository as a chunk-dict image.
"""
