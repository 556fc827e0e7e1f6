"""`cqrsflow bench`: cqrsflow measured against baselines run in the same process.

The harness (`Figure`: medians of interleaved runs, targets, baselines, ratios), one
suite per module (`write` and `read` of the log, `commands` through the flow, `projections`,
`query`, `codecs`, `peer`, `cache`, `soak`), `bench_all` with DESIGN.md's `TARGETS`, and
`compare` of two JSON reports. `SUITES` names every suite with the function that runs it.
"""

from flows.bench._all import (
    BEGIN,
    END,
    IN_ALL,
    SUITES,
    TARGETS,
    AllReport,
    Suite,
    bench_all,
    check_targets,
    markdown,
    render_all,
    run_suite,
    write_markdown,
)
from flows.bench._cache import SCAN_EVERY, bench_cache, redis_server, zipf_trace
from flows.bench._codecs import (
    arrow_decode,
    arrow_encode,
    bench_codecs,
    json_decode,
    json_encode,
    msgpack_decode,
    msgpack_encode,
)
from flows.bench._compare import compare, parse_threshold, render_comparison
from flows.bench._flow import bench_commands
from flows.bench._harness import (
    BenchUsageError,
    Figure,
    SuiteUnavailable,
    render,
    to_json,
    wide,
)
from flows.bench._peer import PeerMissing, bench_peer, peer_version
from flows.bench._query import bench_query
from flows.bench._soak import bench_soak
from flows.bench._store import SCALES, Scale, bank_batches, bench_read, bench_write
from flows.bench._views import VIEW_SCALES, ViewScale, bench_projections

__all__ = [
    "BEGIN",
    "END",
    "IN_ALL",
    "SCALES",
    "SCAN_EVERY",
    "SUITES",
    "TARGETS",
    "VIEW_SCALES",
    "AllReport",
    "BenchUsageError",
    "Figure",
    "PeerMissing",
    "Scale",
    "Suite",
    "SuiteUnavailable",
    "ViewScale",
    "arrow_decode",
    "arrow_encode",
    "bank_batches",
    "bench_all",
    "bench_cache",
    "bench_codecs",
    "bench_commands",
    "bench_peer",
    "bench_projections",
    "bench_query",
    "bench_read",
    "bench_soak",
    "bench_write",
    "check_targets",
    "compare",
    "json_decode",
    "json_encode",
    "markdown",
    "msgpack_decode",
    "msgpack_encode",
    "parse_threshold",
    "peer_version",
    "redis_server",
    "render",
    "render_all",
    "render_comparison",
    "run_suite",
    "to_json",
    "wide",
    "write_markdown",
    "zipf_trace",
]
