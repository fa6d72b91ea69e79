"""Test-wide set-up: keep Prefect and the store out of the developer's home directory."""

from __future__ import annotations

import os
import tempfile

# Before anything imports prefect: a private PREFECT_HOME, no profile, no analytics noise.
_prefect_home = tempfile.mkdtemp(prefix="usersync-prefect-")
os.environ["PREFECT_HOME"] = _prefect_home
os.environ.setdefault("PREFECT_TEST_MODE", "1")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
