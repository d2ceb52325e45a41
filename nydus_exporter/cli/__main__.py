"""``python -m nydus_exporter.cli``: the same as the ``nydus-exporter`` command."""

import sys

from nydus_exporter.cli.main import main

sys.exit(main())
