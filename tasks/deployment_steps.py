"""The pull step of usersync's deployments: where a run finds the code and its settings.

`prefect deploy` resolves every `{{ $VAR }}` and `{{ prefect.variables.* }}` in prefect.yaml
on the deployer's machine and stores the result, so a pull step written with them carries the
deployer's path to every worker. This step's inputs are plain names instead, read when a run
starts, on the worker that runs it: each setting comes from that worker's environment, else
from the Prefect variable named for it (Variables page; one place for every worker), else is
left unset (usersync's own default). Then the run works in `USERSYNC_HOME`, if set (a
container image sets it; a process worker's checkout is wherever that host keeps it).
Non-secret settings only: secrets stay in Secret blocks a profile names.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable ← Prefect variable each run reads (the defaults of the step's input).
SETTINGS = {
    "USERSYNC_HOME": "usersync_home",
    "USERSYNC_STORE_URL": "usersync_store_url",
    "USERSYNC_MAPPINGS_DIR": "usersync_mappings_dir",
}


def use_usersync_settings(variables: dict[str, str] | None = None) -> dict[str, str]:
    """Fill in this run's usersync settings and change to `USERSYNC_HOME` (a pull step).

    Args:
        variables: environment variable → Prefect variable to read it from when the worker's
            environment does not set it (default: `SETTINGS`).

    Returns:
        `{"directory": the working directory}`, and where each setting came from, for the
        step's log.

    Raises:
        FileNotFoundError: `USERSYNC_HOME` names no directory on this worker.
    """
    from prefect.variables import Variable

    origins: dict[str, str] = {}
    for env, name in (variables or SETTINGS).items():
        if os.environ.get(env):
            origins[env] = "worker environment"
            continue
        value = Variable.get(name, default=None)
        if value:
            os.environ[env] = str(value)
            origins[env] = f"Prefect variable {name}"
    home = os.environ.get("USERSYNC_HOME")
    if not home and not Path("flows", "profiles.py").is_file():
        raise FileNotFoundError(
            f"this worker runs in {os.getcwd()}, which is no usersync checkout, and "
            "USERSYNC_HOME is not set: set it in the worker's environment, or once for every "
            "worker as the Prefect variable usersync_home"
        )
    if home:
        if not Path(home).is_dir():
            raise FileNotFoundError(
                f"USERSYNC_HOME={home} ({origins.get('USERSYNC_HOME')}) is no directory on "
                "this worker: point it at the usersync checkout (or image path) there"
            )
        os.chdir(home)
    return {"directory": os.getcwd(), **origins}
