from tests.integration.conftest import Host, host, new_host  # noqa: F401 - shared fixtures
