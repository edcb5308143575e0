"""Start app.py on a free localhost port for the end-to-end and browser tests: bench/app_server.py,
which bench/load.py shares (bench never imports from tests)."""
from bench.app_server import free_port, running_app  # noqa: F401
