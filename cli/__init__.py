"""usersync's command line: the outermost layer. It starts flows, serves the inbox and the
sandbox, and reads the store; nothing imports it (tests/test_layers.py)."""
