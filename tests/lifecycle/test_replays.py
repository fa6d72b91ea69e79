"""Histories `make soak` found failing, replayed as fixed sequences of the machine's steps.

Each is the shortest sequence found by hand that fails the same way; it runs in CI with the
short random run, so the defect stays fixed.
"""

from __future__ import annotations

from tests.lifecycle.conftest import World
from tests.lifecycle.test_stateful import LifecycleMachine


def test_a_group_created_by_a_run_that_died_is_filled_by_the_next(world: World) -> None:
    """2026-12-06: a run died in Confluence right after creating 'sales' (the renamed source
    group), before the ledger learnt of it; the next run took 'sales' for a group made by hand,
    which an on-the-fly rule may not fill, and left alice out of it for good (rule 7)."""
    state = LifecycleMachine(world)
    state.populate(memberships=[("eng", 0)], people=[("alice", "b", "capitals", True)])
    state.change_group(change=("rename", "qa"), name="eng")
    state.delta_sync()
    state.change_group(change=("rename", "sales"), name="qa")
    state.sync_killed_midway(after=1, product="confluence")  # then a clean sync, checked
    state.teardown()
