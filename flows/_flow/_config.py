"""How a command flow runs: its data directory, its log, its shards, its intake."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from flows._flow._shard import ShardConfig
from store import LogConfig

# The active segment of each partition keeps a map per aggregate in memory (its versions
# and rows): at a million aggregates, 64 MiB segments cost ~55 MB of maps per partition.
# Sealed segments cost nothing resident (each index lookup drops its pages); 16 MiB
# quarters the maps, for more sealed indexes to search: `cqrsflow run` of 10M commands
# over 1M accounts peaked at 466 MB, against 550 at 32 MiB.
FLOW_LOG = LogConfig(partitions=4, segment_bytes=16 * 1024 * 1024)


@dataclass(frozen=True, slots=True)
class FlowConfig:
    """Where a flow keeps its data, its log (partitions = shards, fixed when the log is
    created; fsync; segment size), its shards' configuration, and its intake."""

    data_dir: Path
    log: LogConfig = FLOW_LOG
    shard: ShardConfig = field(default_factory=ShardConfig)
    # Intake slows while the views are more than this many events behind a partition
    # (0: never), so a slow view costs latency, not memory.
    max_view_lag: int = 2_000_000
    # A run resuming an input run here before (`cqrsflow run`, its checkpoints exist):
    # a shard that finds no checkpoint of its own in a partition that holds events
    # knows the earlier run crashed before its first checkpoint, and that the input
    # starts again from its beginning. Never for a new input: the events in the log
    # are then another input's, decided and answered long ago.
    resuming: bool = False

    @property
    def partitions(self) -> int:
        return self.log.partitions or 1
