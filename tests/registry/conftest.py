"""The registry suites use the real-registry fixtures of :mod:`tests.registry_fixtures`.

They are imported here rather than named in ``pytest_plugins``: pytest accepts that only in
the top-level conftest (``tests/conftest.py`` may load them for the whole suite with
``pytest_plugins = ["tests.registry_fixtures"]``; both ways together are harmless).
"""

from tests.registry_fixtures import (  # noqa: F401 - fixtures are found by name
    fault_proxy,
    make_fault_proxy,
    registry,
    registry_basic,
    registry_tls,
    registry_token,
    repo_name,
    server_loop,
)
