"""Reproducible workloads of commands for the example applications (`cqrsflow generate`).

The bank's: accounts are opened when first used; most commands are deposits and withdrawals; a
few are meant to be rejected (overdrawing, opening twice, paying into an unknown or
closed account, closing with money in it), and at `invalid_rate` a record is
malformed in one of the ways real input is (truncated JSON, wrong types, unknown
command types, missing fields, huge strings, binary garbage).

The shop's: products are added when first ordered; orders of one to three lines are
placed, their stock reserved line by line (until a process does it), most are paid and
shipped, some cancelled with their reservations released; now and then a product is
restocked, an order is paid the wrong amount, or asks for more than is in stock.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from connectors import Format


def bank_commands(
    commands: int, accounts: int, *, seed: int = 7, invalid_rate: float = 0.0
) -> Iterator[dict[str, Any] | bytes]:
    """Command records as dicts, or raw bytes for the malformed ones."""
    rng = random.Random(seed)
    balance: dict[int, int] = {}
    closed: set[int] = set()
    for i in range(commands):
        command_id = f"cmd-{seed}-{i}"
        if invalid_rate and rng.random() < invalid_rate:
            yield _malformed(rng, command_id)
            continue
        k = rng.randrange(accounts)
        agg = f"acct-{k:07d}"
        roll = rng.random()
        data: dict[str, Any]
        if k not in balance or (roll < 0.002 and k not in closed):
            # first use opens it; now and then someone tries to open it again
            kind, data = "OpenAccount", {"owner": f"owner {k}", "overdraft_limit": 100 * (k % 3)}
            balance.setdefault(k, 0)
        elif roll < 0.55:
            amount = rng.randrange(1, 10_000)
            kind, data = "Deposit", {"amount": amount}
            if k not in closed:
                balance[k] += amount
        elif roll < 0.97:
            # mostly affordable, sometimes more than the balance allows
            ceiling = max(balance[k], 1) * (3 if rng.random() < 0.1 else 1)
            amount = rng.randrange(1, ceiling + 1)
            kind, data = "Withdraw", {"amount": amount}
            if k not in closed and balance[k] - amount >= -100 * (k % 3):
                balance[k] -= amount
        elif roll < 0.98:
            kind, data = "Deposit", {"amount": rng.randrange(1, 100)}
            agg = f"acct-unknown-{rng.randrange(1_000_000)}"
        else:
            kind, data = "CloseAccount", {}
            if k not in closed and balance[k] == 0:
                closed.add(k)
        yield {"command_id": command_id, "type": kind, "aggregate_id": agg, "data": data}


def shop_commands(
    commands: int, products: int, *, seed: int = 7, invalid_rate: float = 0.0
) -> Iterator[dict[str, Any] | bytes]:
    """The shop's command records (see the module's doc)."""
    rng = random.Random(seed)
    added: set[int] = set()
    pending: list[list[tuple[str, str, dict[str, Any]]]] = []  # each open order's next steps
    orders = 0
    made = 0

    def record(kind: str, aggregate: str, data: dict[str, Any]) -> dict[str, Any]:
        nonlocal made
        made += 1
        return {
            "command_id": f"cmd-{seed}-{made - 1}",
            "type": kind,
            "aggregate_id": aggregate,
            "data": data,
        }

    while made < commands:
        roll = rng.random()
        if invalid_rate and roll < invalid_rate:
            made += 1
            yield _malformed(rng, f"cmd-{seed}-{made - 1}")
        elif pending and roll < 0.7:
            steps = pending[rng.randrange(len(pending))]
            yield record(*steps.pop(0))
            if not steps:
                pending.remove(steps)
        elif added and roll < 0.72:
            sku = f"sku-{rng.choice(sorted(added)):06d}"
            yield record("Restock", sku, {"quantity": rng.randrange(10, 200)})
        else:
            order = f"order-{seed}-{orders}"
            orders += 1
            lines: list[dict[str, Any]] = []
            for k in rng.sample(range(products), min(products, rng.randrange(1, 4))):
                price = 100 + k % 900
                if k not in added:
                    added.add(k)
                    yield record(
                        "AddProduct",
                        f"sku-{k:06d}",
                        {"name": f"product {k}", "price": price, "stock": 500},
                    )
                lines.append(
                    {"sku": f"sku-{k:06d}", "quantity": rng.randrange(1, 6), "price": price}
                )
            customer = f"customer {rng.randrange(10_000)}"
            yield record("PlaceOrder", order, {"customer": customer, "lines": lines})
            total = sum(line["quantity"] * line["price"] for line in lines)
            # now and then a line asks for more than any stock holds
            steps = [
                (
                    "ReserveStock",
                    line["sku"],
                    {
                        "order_id": order,
                        "quantity": line["quantity"] * (1000 if rng.random() < 0.02 else 1),
                    },
                )
                for line in lines
            ]
            if rng.random() < 0.85:
                paid = total if rng.random() < 0.98 else total + 1  # sometimes the wrong amount
                steps += [("PayOrder", order, {"amount": paid}), ("ShipOrder", order, {})]
            else:
                steps.append(("CancelOrder", order, {"reason": "changed my mind"}))
                steps += [("ReleaseStock", line["sku"], {"order_id": order}) for line in lines]
            pending.append(steps)


# The example applications' workloads, by the short name `cqrsflow generate` takes.
WORKLOADS: dict[str, Callable[..., Iterator[dict[str, Any] | bytes]]] = {
    "bank": bank_commands,
    "shop": shop_commands,
}


def _malformed(rng: random.Random, command_id: str) -> dict[str, Any] | bytes:
    good = {
        "command_id": command_id,
        "type": "Deposit",
        "aggregate_id": f"acct-{rng.randrange(1000):07d}",
        "data": {"amount": 10},
    }
    kind = rng.randrange(6)
    if kind == 0:
        return msgspec.json.encode(good)[: rng.randrange(1, 40)]  # truncated
    if kind == 1:
        return {**good, "data": {"amount": "ten"}}  # wrong type
    if kind == 2:
        return {**good, "type": "Transfer"}  # unknown type
    if kind == 3:
        return {k: v for k, v in good.items() if k != "aggregate_id"}  # missing field
    if kind == 4:
        return {**good, "data": {"owner": "x" * 100_000}}  # huge
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))  # garbage


def encoder(fmt: Format) -> Callable[[dict[str, Any] | bytes], bytes]:
    """One record's bytes in the file format (JSON Lines adds the newline)."""
    if fmt == "jsonl":
        json = msgspec.json.Encoder()

        def to_jsonl(record: dict[str, Any] | bytes) -> bytes:
            raw = record if isinstance(record, bytes) else json.encode(record)
            return raw.replace(b"\n", b" ") + b"\n"

        return to_jsonl
    packer = msgspec.msgpack.Encoder()
    # msgpack cannot resynchronise after garbage, so malformed records travel as
    # well-formed msgpack of the wrong shape (a bin object where a map belongs).
    return packer.encode
