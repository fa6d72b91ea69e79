"""The engine's INFO lines reach every flow run's log while any run of the process is going."""

from __future__ import annotations

import logging

from usersync_tasks.run_logs import ENGINE_LOGGER, _raise_level, _restore_level


def test_a_run_that_ends_does_not_silence_one_still_going() -> None:
    logger = logging.getLogger(ENGINE_LOGGER)
    before = logger.level
    logger.setLevel(logging.NOTSET)
    try:
        _raise_level(logger)  # the first run starts
        _raise_level(logger)  # a second run starts in the same process (a served deployment)
        _restore_level(logger)  # the first ends
        assert logger.isEnabledFor(logging.INFO)  # the second's "its turn came" still logs
        _restore_level(logger)  # the last ends: the level it found is back
        assert logger.level == logging.NOTSET
    finally:
        logger.setLevel(before)
