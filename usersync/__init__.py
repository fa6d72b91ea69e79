"""usersync's engine. Importing any part of it installs the log redaction (see `redaction`)."""

from usersync.redaction import install_log_redaction

# Here, not in one module: every entry point (the CLI, the flows, an embedding script's
# `import usersync...`) must have it before anything it runs can log a URL.
install_log_redaction()
