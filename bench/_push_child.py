"""The measured child of bench/push.py: push one image of an OCI layout with the library.

``python bench/_push_child.py LAYOUT TAG REFERENCE`` pushes the image tagged TAG in the OCI
layout LAYOUT to REFERENCE (``host[:port]/repository:tag``; loopback hosts are reached over
plain HTTP) with :func:`nydus_exporter.pipeline.push.push_image`, and prints one JSON object:
``push_s`` (the push itself, client set-up included, imports excluded) and the
:class:`~nydus_exporter.pipeline.push.PushStats` counters. Nothing else is done, so the launcher's wall
time is interpreter start + imports + the push, and nothing of the conversion.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from nydus_exporter.errors import ExporterError
from nydus_exporter.oci.layout import OciLayout
from nydus_exporter.oci.reference import parse_reference
from nydus_exporter.pipeline.push import push_image
from nydus_exporter.registry.sync import SyncRegistry


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: _push_child.py LAYOUT TAG REFERENCE", file=sys.stderr)
        return 2
    layout_dir, tag, target = argv
    try:
        layout = OciLayout.open(Path(layout_dir))
        root = layout.resolve(tag)
        ref = parse_reference(target)
        start = time.perf_counter()
        with SyncRegistry() as registry:
            stats = push_image(registry, layout, root, [ref])
        push_s = time.perf_counter() - start
    except ExporterError as exc:
        print(f"push failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"push_s": push_s, "root": root.digest, **asdict(stats)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
