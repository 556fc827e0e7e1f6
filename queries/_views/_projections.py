"""Materialized views in DIR/projections.duckdb, maintained exactly once from the log.

Every view (a SQL `View` or a `PythonProjection`) has versions. A version's rows live in
tables of the ``cqrsflow`` schema (``cqrsflow."balances@1"``), its checkpoint (the next
log position to apply, per partition) in ``cqrsflow.checkpoints``, and users read it
through a plain DuckDB view in ``main`` (``balances``) that shows the live version.

`Projections.apply` runs each micro-batch's SQL and the checkpoint update in one DuckDB
transaction, so a crash leaves every view at a checkpoint it fully applied, and
resuming from it neither skips nor repeats an event. A changed definition (or a
`rebuild`) builds a new version beside the live one from position 0 while the live one
keeps being maintained; once both have applied the same positions, one transaction makes
the new version live and drops the old.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import duckdb
import pyarrow as pa

from queries._errors import ProjectionsBusy, QueryError, ViewDefinitionError
from queries._tables import event_tables, log_layouts, quote
from queries._views._delta import DELTA, delta_select, merge_statements
from queries._views._lag import Lag, view_lags
from queries._views._metrics import MAINTENANCE_SECONDS, VIEW_EVENTS
from queries._views._viewdef import ViewDef, parse_view
from store import DataDir, Layout, LogReader

_BATCH = "__cqrsflow_batch"

# What a Python projection's apply gets: the connection (inside the transaction), the
# events, and the physical name of each of its tables.
ApplyFn = Callable[[duckdb.DuckDBPyConnection, pa.Table, Mapping[str, str]], None]


@dataclass(frozen=True, slots=True)
class View:
    """A materialized view declared in SQL over the event tables (see `parse_view`).

    `keys` names the columns of a rows view that identify a row (its primary key, used
    for indexed lookups); an aggregate view's keys are its GROUP BY columns."""

    name: str
    sql: str
    keys: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True, slots=True)
class PythonProjection:
    """The escape hatch: a function over Arrow batches that writes its own tables.

    `tables` maps each table's name to its column definitions (``"account VARCHAR
    PRIMARY KEY, n BIGINT"``). `apply(con, events, tables)` runs inside the batch's
    transaction and must write to the physical names in `tables` (rebuilds use new
    ones). Bump `version` when `apply` changes: the projection is rebuilt."""

    name: str
    tables: Mapping[str, str]
    apply: ApplyFn
    version: int = 1
    description: str = ""


Declared = View | PythonProjection


class KeyListener(Protocol):
    """A cache of rows by key (the query layer's): which views it looks keys up in,
    and, after each committed batch, which keys changed per view applied to (an
    Arrow array of a one-column key, or None for "any key")."""

    def wants(self, view: str) -> bool: ...

    def touched(self, keys: dict[str, pa.Array | None]) -> None: ...


@dataclass(slots=True)
class _Target:
    """One version of one view, as maintained."""

    declared: Declared
    version: int
    live: bool
    checkpoint: dict[int, int]
    definition: ViewDef | None = None
    frozen: bool = False
    statements: list[str] = field(default_factory=list)
    tables: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.declared.name}@{self.version}"


def fingerprint(declared: Declared) -> str:
    """What identifies a definition: changing it builds a new version."""
    if isinstance(declared, View):
        text = "sql:" + " ".join(declared.sql.split()) + ":" + ",".join(declared.keys)
    else:
        text = f"python:{declared.version}:" + repr(sorted(declared.tables.items()))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _disk_full(err: BaseException) -> QueryError | None:
    """One line with the fix for DuckDB's failure to write the database to a full disk."""
    if not isinstance(err, duckdb.Error) or os.strerror(errno.ENOSPC) not in str(err):
        return None
    said = str(err).splitlines()[0].removeprefix("TransactionContext Error: ")
    return QueryError(
        f"the views could not be written, the disk is full ({said}); free space and run "
        "again: the views resume from the last batch they applied"
    )


def open_database(path: Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the projections database, explaining a lock held by another process."""
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as err:
        if "lock" not in str(err).lower():
            raise
        raise ProjectionsBusy(
            f"{path} is in use by another process (DuckDB allows one writer): "
            f"{str(err).splitlines()[0]}; ask that process (`cqrsflow query --connect`) "
            "or stop it first"
        ) from None


class Projections:
    """The views of one data directory, kept in its projections database."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        layout: Layout,
        partitions: int,
        declared: Sequence[Declared],
    ) -> None:
        self.con = con
        self.layout = layout
        self.partitions = partitions
        self._tables = event_tables(layout, _BATCH)
        self._read_schema = layout.read_schema
        names = [d.name for d in declared]
        if len(set(names)) != len(names):
            raise ViewDefinitionError(f"two views share a name: {sorted(names)}")
        self._targets: list[_Target] = []
        self._prepare_catalog()
        for d in declared:
            self._targets.extend(self._declare(d))
        self._listeners: list[KeyListener] = []
        self._touched: dict[str, pa.Array | None] = {}

    @classmethod
    def open(
        cls,
        data_dir: Path,
        declared: Sequence[Declared],
        layout: Layout | None = None,
        *,
        reader: LogReader | None = None,
    ) -> Projections:
        """Open DIR/projections.duckdb for maintenance (the one writer)."""
        reader = reader or LogReader.open(data_dir, layout)
        layout = layout or reader.layout or next(reversed(log_layouts(reader)), None)
        if layout is None:
            raise ViewDefinitionError(
                f"{data_dir}: the log has no events yet, so its event tables are unknown; "
                "pass the layout"
            )
        con = open_database(DataDir(data_dir).projections)
        try:
            return cls(con, layout, reader.partitions, declared)
        except BaseException:
            con.close()
            raise

    # -- declaration -----------------------------------------------------------

    def _prepare_catalog(self) -> None:
        self.con.execute("CREATE SCHEMA IF NOT EXISTS cqrsflow")
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS cqrsflow.versions (name VARCHAR, version INTEGER, "
            "fingerprint VARCHAR NOT NULL, definition VARCHAR NOT NULL, live BOOLEAN NOT NULL, "
            "created TIMESTAMPTZ DEFAULT now(), PRIMARY KEY (name, version))"
        )
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS cqrsflow.checkpoints (name VARCHAR, version INTEGER, "
            "partition INTEGER, next_position BIGINT NOT NULL, "
            "PRIMARY KEY (name, version, partition))"
        )

    def _declare(self, declared: Declared) -> list[_Target]:
        definition = self._parse(declared)
        stored = self.con.execute(
            "SELECT version, fingerprint, live, definition FROM cqrsflow.versions "
            "WHERE name = ? ORDER BY version",
            [declared.name],
        ).fetchall()
        wanted = fingerprint(declared)
        targets = []
        for version, fp, live, text in stored:
            if fp == wanted:
                targets.append(self._target(declared, definition, version, live))
            elif live:
                # The definition changed: the old version stays live, maintained by its
                # own definition, until the new one has caught up. A Python projection's
                # old code is gone, so its old version is frozen meanwhile.
                old = _stored(declared, text)
                old_definition = self._parse(old)
                target = self._target(old, old_definition, version, live)
                # Nor can an old definition that reads a column the application's
                # events no longer have (a field removed or upcast away): it serves its
                # rows, frozen, until the new version has caught up and replaces it.
                target.frozen = isinstance(declared, PythonProjection) or (
                    old_definition is not None and not self._binds(old_definition)
                )
                targets.append(target)
            else:
                self._drop(self._target(declared, None, version, live))
        if not any(fp == wanted for _, fp, _, _ in stored):
            targets.append(self._create(declared, definition, live=not targets))
        return targets

    def _parse(self, declared: Declared) -> ViewDef | None:
        if isinstance(declared, PythonProjection):
            return None
        definition = parse_view(declared.name, declared.sql, set(self._tables))
        self._check_keys(declared, definition)
        return definition

    def _check_keys(self, declared: View, definition: ViewDef) -> None:
        unknown = set(declared.keys) - set(definition.names)
        if unknown:
            raise ViewDefinitionError(
                f"view {declared.name!r}: keys {sorted(unknown)} are not columns of the view "
                f"({definition.names})"
            )
        if declared.keys and definition.kind == "aggregate":
            raise ViewDefinitionError(
                f"view {declared.name!r}: an aggregate view's keys are its GROUP BY columns; "
                "drop keys=..."
            )

    def _target(
        self, declared: Declared, definition: ViewDef | None, version: int, live: bool
    ) -> _Target:
        rows = self.con.execute(
            "SELECT partition, next_position FROM cqrsflow.checkpoints "
            "WHERE name = ? AND version = ?",
            [declared.name, version],
        ).fetchall()
        checkpoint = dict.fromkeys(range(self.partitions), 0) | dict(rows)
        target = _Target(declared, version, live, checkpoint, definition)
        if isinstance(declared, View):
            assert definition is not None
            target.tables = {declared.name: f"cqrsflow.{quote(target.key)}"}
            source = self._tables[definition.source]
            target.statements = merge_statements(definition, target.tables[declared.name], source)
        else:
            target.tables = {t: f"cqrsflow.{quote(f'{target.key}.{t}')}" for t in declared.tables}
        return target

    def _create(self, declared: Declared, definition: ViewDef | None, *, live: bool) -> _Target:
        (version,) = self.con.execute(
            "SELECT coalesce(max(version), 0) + 1 FROM cqrsflow.versions WHERE name = ?",
            [declared.name],
        ).fetchone() or (1,)
        text = json.dumps(
            {"sql": declared.sql, "keys": list(declared.keys)}
            if isinstance(declared, View)
            else {"tables": dict(declared.tables)}
        )
        self.con.begin()
        try:
            self.con.execute(
                "INSERT INTO cqrsflow.versions (name, version, fingerprint, definition, live) "
                "VALUES (?, ?, ?, ?, ?)",
                [declared.name, version, fingerprint(declared), text, live],
            )
            target = self._target(declared, definition, version, live)
            self._create_tables(target)
            if live:
                self._expose(target)
            self.con.commit()
        except BaseException as err:
            self._roll_back(err)
            raise
        return target

    def _binds(self, definition: ViewDef) -> bool:
        """Whether `definition`'s batch SELECT binds to today's event columns."""
        self.con.register(_BATCH, self._read_schema.empty_table())
        try:
            self.con.execute(
                f"DESCRIBE {delta_select(definition, self._tables[definition.source])}"
            ).fetchall()
        except duckdb.BinderException:
            return False
        self.con.unregister(_BATCH)
        return True

    def _create_tables(self, target: _Target) -> None:
        declared = target.declared
        if isinstance(declared, PythonProjection):
            for name, columns in declared.tables.items():
                self.con.execute(f"CREATE TABLE {target.tables[name]} ({columns})")
            return
        definition = target.definition
        assert definition is not None
        # The column types are what DuckDB infers for the batch SELECT over no events.
        self.con.register(_BATCH, self._read_schema.empty_table())
        try:
            described = self.con.execute(
                f"DESCRIBE {delta_select(definition, self._tables[definition.source])}"
            ).fetchall()
        except duckdb.Error as err:
            # Left registered: inside the failed transaction, unregistering would raise
            # "transaction is aborted" in place of this error.
            raise ViewDefinitionError(
                f"view {declared.name!r}: {str(err).splitlines()[0]}"
            ) from None
        self.con.unregister(_BATCH)
        ddl = [f"{quote(column)} {type_}" for column, type_, *_ in described]
        keys = [k.name for k in definition.keys] or list(declared.keys)
        if keys:
            ddl.append(f"PRIMARY KEY ({', '.join(quote(k) for k in keys)})")
        self.con.execute(f"CREATE TABLE {target.tables[declared.name]} ({', '.join(ddl)})")

    def _expose(self, target: _Target) -> None:
        """Point the user-facing views at `target`'s tables."""
        declared = target.declared
        if isinstance(declared, View):
            assert target.definition is not None
            shown = ", ".join(quote(n) for n in target.definition.names)
            exposed = {declared.name: f"SELECT {shown} FROM {target.tables[declared.name]}"}
        else:
            exposed = {t: f"SELECT * FROM {physical}" for t, physical in target.tables.items()}
        for name, select in exposed.items():
            self.con.execute(f"CREATE OR REPLACE VIEW main.{quote(name)} AS {select}")

    # -- maintenance -----------------------------------------------------------

    @property
    def views(self) -> list[Declared]:
        return [t.declared for t in self._targets if t.live]

    def definition(self, name: str) -> ViewDef | None:
        """The parsed definition of a live SQL view."""
        for t in self._targets:
            if t.live and t.declared.name == name:
                return t.definition
        raise KeyError(name)

    def table(self, name: str) -> str:
        """The physical table of a live SQL view (with its hidden columns)."""
        for t in self._targets:
            if t.live and t.declared.name == name:
                return t.tables[name]
        raise KeyError(name)

    def positions(self, name: str) -> dict[int, int]:
        """The next log position per partition the live version of `name` will apply."""
        for t in self._targets:
            if t.live and t.declared.name == name:
                return t.checkpoint
        raise KeyError(name)

    def checkpoints(self) -> dict[str, dict[int, int]]:
        """Each view version's next position per partition (``name@version``)."""
        return {t.key: dict(t.checkpoint) for t in self._targets}

    def watermark(self) -> dict[int, int]:
        """The positions every live view has applied (the lowest per partition)."""
        live = [t for t in self._targets if t.live]
        return {p: min((t.checkpoint[p] for t in live), default=0) for p in range(self.partitions)}

    def listen(self, listener: KeyListener) -> None:
        self._listeners.append(listener)

    def unlisten(self, listener: KeyListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def live_positions(self) -> dict[str, dict[int, int]]:
        """Each live view's next positions (what the lag is measured from)."""
        return {t.declared.name: dict(t.checkpoint) for t in self._targets if t.live}

    def building_positions(self) -> dict[str, dict[int, int]]:
        """Each view being rebuilt: the new version's next positions."""
        return {t.declared.name: dict(t.checkpoint) for t in self._targets if not t.live}

    def building(self) -> list[str]:
        """Versions being built beside a live one (``name@version``)."""
        return [t.key for t in self._targets if not t.live]

    def apply(self, batches: Mapping[int, pa.Table]) -> int:
        """Apply consecutive events of some partitions to every view that has not
        applied them, in one transaction; returns how many rows were applied.

        Each table holds events of one partition in position order without gaps; events
        a view has applied already are skipped, so a replay after a crash is harmless.
        """
        return self._apply(batches, [t for t in self._targets if not t.frozen])

    def _apply(self, batches: Mapping[int, pa.Table], targets: list[_Target]) -> int:
        ranges = {p: _range(p, t) for p, t in batches.items() if t.num_rows}
        if not ranges:
            return 0
        applied = 0
        checkpoints: list[object] = []
        conformed: dict[tuple[tuple[int, int], ...], pa.Table] = {}
        counted: list[tuple[str, int]] = []
        started = time.perf_counter()
        before = [(t, dict(t.checkpoint)) for t in targets]
        self.con.begin()
        try:
            for target in targets:
                parts = {}
                for p, (first, last) in ranges.items():
                    start = target.checkpoint[p]
                    if start < first:
                        raise RuntimeError(
                            f"view {target.key} has applied partition {p} up to {start}, "
                            f"but the batch starts at {first}: events would be skipped"
                        )
                    if start <= last:
                        parts[p] = batches[p].slice(start - first)
                if not parts:
                    continue
                # Views at the same checkpoints (the usual case) share one table.
                key = tuple((p, target.checkpoint[p]) for p in parts)
                events = conformed.get(key)
                if events is None:
                    events = conformed[key] = self._conform(list(parts.values()))
                self._apply_one(target, events)
                applied += events.num_rows
                if target.live:
                    counted.append((target.declared.name, events.num_rows))
                for p in parts:
                    target.checkpoint[p] = ranges[p][1] + 1
                    checkpoints += [target.declared.name, target.version, p, target.checkpoint[p]]
            if checkpoints:
                # One statement for every view's checkpoint: each costs milliseconds.
                rows = ", ".join(["(?, ?, ?, ?)"] * (len(checkpoints) // 4))
                self.con.execute(
                    f"INSERT OR REPLACE INTO cqrsflow.checkpoints VALUES {rows}", checkpoints
                )
            self.con.commit()
        except BaseException as err:
            self._touched = {}
            self._roll_back(err)
            for target, checkpoint in before:  # as the rolled-back database has them
                target.checkpoint = checkpoint
            full = _disk_full(err)
            if full is not None:
                raise full from err
            raise
        MAINTENANCE_SECONDS.observe(time.perf_counter() - started)
        for name, n in counted:
            VIEW_EVENTS.labels(view=name).inc(n)
        touched, self._touched = self._touched, {}
        for listener in list(self._listeners) if touched else ():
            listener.touched(touched)
        self._swap_built()
        return applied

    def _conform(self, tables: list[pa.Table]) -> pa.Table:
        """One table in the layout's read schema (older segments lack newer columns)."""
        schema = self._read_schema
        widened = []
        for t in tables:
            for f in schema:
                if t.schema.get_field_index(f.name) < 0:
                    t = t.append_column(f, pa.nulls(t.num_rows, f.type))
            widened.append(t.select(schema.names))
        return pa.concat_tables(widened, promote_options="permissive")

    def _apply_one(self, target: _Target, events: pa.Table) -> None:
        # Left registered afterwards (the next batch replaces it): unregistering is
        # itself refused inside a failed transaction.
        self.con.register(_BATCH, events)
        try:
            if isinstance(target.declared, PythonProjection):
                target.declared.apply(self.con, events, target.tables)
            else:
                for statement in target.statements:
                    self.con.execute(statement)
                if target.live:
                    wanted = any(li.wants(target.declared.name) for li in self._listeners)
                    self._touched[target.declared.name] = (
                        self._touched_keys(target) if wanted else None
                    )
        except duckdb.ConstraintException as err:
            raise ViewDefinitionError(
                f"view {target.declared.name!r}: {str(err).splitlines()[0]} (a key column "
                "is NULL or repeated for some event; group on a non-NULL expression, e.g. "
                "coalesce(column, '')"
                ")"
            ) from None

    def _touched_keys(self, target: _Target) -> pa.Array | None:
        definition = target.definition
        if definition is None or len(definition.keys) != 1 or definition.kind != "aggregate":
            return None
        key = quote(definition.keys[0].name)
        keys = self.con.sql(f"SELECT {key} FROM {DELTA}").to_arrow_table().column(0)
        return keys.combine_chunks()

    def _roll_back(self, err: BaseException) -> None:
        """Roll back the transaction `err` broke off, without hiding `err`: a COMMIT that
        failed (a full disk) has ended the transaction already, and DuckDB refuses the
        ROLLBACK then ("no transaction is active")."""
        try:
            self.con.rollback()
        except duckdb.Error as failed:
            if "no transaction is active" not in str(failed):
                err.add_note(f"rolling back failed as well: {failed}")

    def _swap_built(self) -> None:
        """Make each version built beside a live one live, once it has caught up."""
        for new in [t for t in self._targets if not t.live]:
            old = next(
                (t for t in self._targets if t.live and t.declared.name == new.declared.name),
                None,
            )
            if old is not None and any(new.checkpoint[p] < c for p, c in old.checkpoint.items()):
                continue
            self.con.begin()
            try:
                if old is not None:
                    self._drop(old)
                self.con.execute(
                    "UPDATE cqrsflow.versions SET live = true WHERE name = ? AND version = ?",
                    [new.declared.name, new.version],
                )
                self._expose(new)
                self.con.commit()
            except BaseException as err:
                self._roll_back(err)
                raise
            new.live = True
            if old is not None:
                self._targets.remove(old)

    def _drop(self, target: _Target) -> None:
        for physical in target.tables.values():
            self.con.execute(f"DROP TABLE IF EXISTS {physical}")
        for sql in (
            "DELETE FROM cqrsflow.checkpoints WHERE name = ? AND version = ?",
            "DELETE FROM cqrsflow.versions WHERE name = ? AND version = ?",
        ):
            self.con.execute(sql, [target.declared.name, target.version])

    def rebuild(self, name: str) -> str:
        """Start building a new version of `name` beside the live one (from position 0);
        `catch_up` builds it and swaps it in. Returns ``name@version``."""
        live = [t for t in self._targets if t.live and t.declared.name == name]
        if not live:
            names = sorted({t.declared.name for t in self._targets})
            raise QueryError(f"no view {name!r}; the views are {', '.join(names)}")
        for t in [t for t in self._targets if not t.live and t.declared.name == name]:
            self._drop(t)
            self._targets.remove(t)
        # A second version with the same fingerprint: `_declare` keeps both, and the
        # live one is dropped at the swap.
        new = self._create(live[0].declared, live[0].definition, live=False)
        self._targets.append(new)
        return new.key

    def catch_up(
        self,
        reader: LogReader,
        *,
        max_events: int = 1_000_000,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Apply everything committed to the log; returns the rows applied.

        Views at the same checkpoint share each read; one being built from 0 advances
        by at most `max_events` per transaction so the others stay current.
        """
        total = 0
        reader.refresh()
        end = reader.watermarks()
        while True:
            groups: dict[tuple[tuple[int, int], ...], None] = {}
            for t in self._targets:
                if not t.frozen:
                    groups[tuple(sorted(t.checkpoint.items()))] = None
            behind = [dict(g) for g in groups if any(g_p < end[p] for p, g_p in g)]
            if not behind:
                return total
            # The most advanced group first: the live views' fresh events before a rebuild's.
            start = max(behind, key=lambda g: sum(g.values()))
            chunk = _read(reader, start, end, max_events)
            done = self._apply(
                chunk, [t for t in self._targets if not t.frozen and t.checkpoint == start]
            )
            total += done
            if progress is not None:
                progress(sum(t.num_rows for t in chunk.values()))

    def lag(self, reader: LogReader) -> dict[str, Lag]:
        """Each live view's lag behind the log as read now."""
        return view_lags(reader, self.live_positions())

    def close(self) -> None:
        self.con.close()


def _stored(declared: Declared, text: str) -> Declared:
    """The declaration a stored version was made from."""
    stored = json.loads(text)
    if isinstance(declared, View):
        return View(declared.name, stored["sql"], tuple(stored["keys"]))
    return declared


def _range(partition: int, table: pa.Table) -> tuple[int, int]:
    positions = table.column("position")
    first, last = positions[0].as_py(), positions[-1].as_py()
    if last - first + 1 != table.num_rows:
        raise ValueError(
            f"partition {partition}: positions {first}..{last} in {table.num_rows} rows; "
            "expected consecutive positions"
        )
    return first, last


def _read(
    reader: LogReader, start: Mapping[int, int], end: Mapping[int, int], max_events: int
) -> dict[int, pa.Table]:
    """Up to about `max_events` events from `start`, spread over the partitions."""
    behind = [p for p in end if start[p] < end[p]]
    share = max(1, max_events // max(1, len(behind)))
    chunk = {}
    for p in behind:
        batches = []
        rows = 0
        for batch in reader.partition(p).batches(start[p]):
            batches.append(batch)
            rows += batch.num_rows
            if rows >= share:
                break
        if batches:
            chunk[p] = _table(batches)
    return chunk


def _table(batches: list[pa.RecordBatch]) -> pa.Table:
    """Batches as one table without copying; runs of one schema (one segment layout)
    become one table each, so thousands of small batches cost one table, not thousands."""
    runs: list[list[pa.RecordBatch]] = []
    for b in batches:
        if runs and runs[-1][0].schema.equals(b.schema):
            runs[-1].append(b)
        else:
            runs.append([b])
    tables = [pa.Table.from_batches(run) for run in runs]
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
