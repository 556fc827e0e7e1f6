"""Backpressure against the positions a view follower published (a real file)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from flows import Backpressure
from store import DataDir


def publish(data: Path, applied: int, at: float) -> None:
    DataDir(data).published.write_text(json.dumps({"positions": {"0": applied}, "at": at}))


def test_a_shard_waits_while_the_views_are_too_far_behind(tmp_path: Path) -> None:
    publish(tmp_path, 100, time.time())
    brake = Backpressure(tmp_path, max_lag=10)
    brake.wait(0, 105)  # within the bound: no wait at all
    released = threading.Event()

    def decide() -> None:
        brake.wait(0, 200)
        released.set()

    shard = threading.Thread(target=decide)
    shard.start()
    assert not released.wait(0.5)  # held back while the views stay at 100
    publish(tmp_path, 195, time.time())
    shard.join(timeout=60)
    assert released.is_set()


def test_a_follower_that_stopped_reporting_does_not_hold_the_flow(tmp_path: Path) -> None:
    publish(tmp_path, 0, time.time() - 3600)
    Backpressure(tmp_path, max_lag=10).wait(0, 10_000)  # returns: the report is stale
    Backpressure(tmp_path / "nowhere", max_lag=10).wait(0, 10_000)  # no follower at all
