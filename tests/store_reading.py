"""Reading what the store keeps, for tests (the engine reads its checkpoint undecoded)."""

from __future__ import annotations

import pandas as pd

from usersync.store import SourceWatermark, Store


def saved_watermark(store: Store, profile: str) -> tuple[SourceWatermark, dict[str, pd.DataFrame]]:
    """The profile's watermark and the snapshot parts saved with it, decoded.

    Raises:
        KeyError: none saved yet.
    """
    watermark, stored = store.source_checkpoint(profile)
    return watermark, stored.parts()
