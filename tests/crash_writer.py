"""A writer process for the crash and locking tests; run it as a script, never import it.

``crash_writer.py append DATA_DIR SEED PARTITIONS SEGMENT_BYTES``
    Opens the log (Fsync.ALWAYS), continues every account from the log's last
    version, and appends bank-like batches forever. After each `append` returns
    it prints one JSON line, ``[[aggregate_id, version, event_id_hex, partition,
    offset], ...]``: the events the log acknowledged. The test kills it with SIGKILL.

``crash_writer.py hold DATA_DIR``
    Opens the log, appends one event to every partition-0 account it is given none
    of yet, prints ``ready``, and sleeps holding the writer lock until killed.

It lives in ``tests/`` so that it imports `log_events` (the event classes) the same
way the tests do: a script's own directory is the first entry of `sys.path`.
"""

from __future__ import annotations

import json
import random
import sys
import time

from log_events import AccountClosed, bank_layout, bank_payload, new_event

from store import ArrowLog, Fsync, LogConfig

ACCOUNTS = [f"acct-{i}" for i in range(40)]  # ids of different lengths, on purpose


def append_forever(data_dir: str, seed: int, partitions: int, segment_bytes: int) -> None:
    rng = random.Random(seed)
    config = LogConfig(partitions=partitions, segment_bytes=segment_bytes, fsync=Fsync.ALWAYS)
    with ArrowLog.open(data_dir, bank_layout(), config) as log:
        versions = {a: log.last_version(a) for a in ACCOUNTS}
        n = 0
        while True:
            events = []
            for _ in range(rng.randint(1, 8)):
                # One busy account, so that sealed segments hold long runs of one stream.
                agg = ACCOUNTS[0] if rng.random() < 0.4 else rng.choice(ACCOUNTS)
                versions[agg] += 1
                n += 1
                payload = bank_payload(versions[agg], n)
                if versions[agg] > 1 and rng.random() < 0.02:
                    payload = AccountClosed()
                events.append(
                    new_event(
                        agg,
                        versions[agg],
                        payload,
                        timestamp=1_700_000_000_000_000 + n,
                        command_id=f"cmd-{seed}-{n}",
                        correlation_id=None if n % 3 else f"flow-{seed}",
                    )
                )
            positions = log.append(events)
            acked = [
                [e.aggregate_id, e.version, e.event_id.hex(), p.partition, p.offset]
                for e, p in zip(events, positions, strict=True)
            ]
            sys.stdout.write(json.dumps(acked) + "\n")
            sys.stdout.flush()


def hold(data_dir: str) -> None:
    with ArrowLog.open(data_dir, bank_layout(), LogConfig(fsync=Fsync.ALWAYS)) as log:
        events = [
            new_event(a, log.last_version(a) + 1, bank_payload(log.last_version(a) + 1, i))
            for i, a in enumerate(ACCOUNTS[:5])
        ]
        log.append(events)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        while True:
            time.sleep(60)


def main(argv: list[str]) -> None:
    mode, data_dir, *rest = argv
    if mode == "append":
        seed, partitions, segment_bytes = map(int, rest)
        append_forever(data_dir, seed, partitions, segment_bytes)
    elif mode == "hold":
        hold(data_dir)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
