"""Loading an application by name, and the data directory's record of the one it holds.

An application is named as uvicorn and ``bytewax.run`` name their targets:
``MODULE:ATTR`` (importable), ``path/to/file.py:ATTR`` (a file, loaded with its folder
on ``sys.path`` so that it can import its neighbours), or a short name of an example
(``bank``, ``shop``). The attribute is an `App` (or a lone `Aggregate`, an application
of one type).

A data directory belongs to one application: ``DIR/app.json`` records its name, how to
load it and its layout's fingerprint. `claim` writes that record when a flow starts
(and refuses another application); `app_for` gives every other command the application
it was asked for, or else the recorded one.

>>> load_app("bank").name
'bank'
>>> load_app("flows.bank:NOPE")
Traceback (most recent call last):
    ...
flows._load.AppError: flows.bank:NOPE: module flows.bank has no attribute 'NOPE'
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows._app import App
from flows._domain import Aggregate
from flows._errors import FlowError
from store import DataDir, LogReader, SchemaError

EXAMPLES = {"bank": "flows.bank:APP", "shop": "flows.shop:APP"}


class AppError(FlowError):
    """An application that cannot be loaded, or that does not belong to a data directory."""


def app_spec(spec: str) -> str:
    """How `spec` is recorded: an example's full name, a file's absolute path.

    >>> app_spec("bank")
    'flows.bank:APP'
    """
    spec = EXAMPLES.get(spec, spec)
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        return f"{Path(target).resolve()}:{attr}"
    return spec


def load_app(spec: str) -> App:
    """The application `spec` names (see the module's doc)."""
    full = EXAMPLES.get(spec, spec)
    target, colon, attr = full.rpartition(":")
    if not colon or not target or not attr:
        examples = ", ".join(EXAMPLES)
        raise AppError(
            f"{spec}: expected MODULE:ATTR, path/to/file.py:ATTR or an example ({examples})"
        )
    module = _module(spec, target)
    try:
        value = getattr(module, attr)
    except AttributeError:
        raise AppError(f"{spec}: module {module.__name__} has no attribute {attr!r}") from None
    if isinstance(value, Aggregate):
        return App.of(value)
    if not isinstance(value, App):
        raise AppError(
            f"{spec}: expected a flows.App (or a flows.Aggregate), got {type(value).__name__}"
        )
    return value


def _module(spec: str, target: str) -> Any:
    if not target.endswith(".py"):
        try:
            return importlib.import_module(target)
        except ImportError as err:
            raise AppError(
                f"{spec}: cannot import {target} ({err}); is it installed, or on PYTHONPATH? "
                "A file is named path/to/file.py:ATTR"
            ) from None
    path = Path(target).resolve()
    if not path.is_file():
        raise AppError(f"{spec}: no such file {path}")
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    # Loaded under its own name, once, so that the user's tests (`from app import ...`)
    # and a cluster's pickled commands find the very same classes.
    loaded = sys.modules.get(path.stem)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path:
        return loaded
    found = importlib.util.spec_from_file_location(path.stem, path)
    assert found is not None and found.loader is not None
    module = importlib.util.module_from_spec(found)
    sys.modules[path.stem] = module
    try:
        found.loader.exec_module(module)
    except BaseException:
        del sys.modules[path.stem]
        raise
    return module


@dataclass(frozen=True, slots=True)
class AppRecord:
    """What a data directory records of its application."""

    name: str
    load: str
    fingerprint: str


def recorded_app(data: Path) -> AppRecord | None:
    """The application recorded in `data`, if any."""
    path = DataDir(data).app
    try:
        raw = json.loads(path.read_text())
        return AppRecord(raw["name"], raw["load"], raw["fingerprint"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        raise AppError(
            f"{path}: not an application record (expected name, load and fingerprint); "
            "restore it, or delete it and pass --app"
        ) from None


def _refuse_other(data: Path, app: App, spec: str, record: AppRecord | None) -> None:
    if record is not None and record.name != app.name:
        raise AppError(
            f"{data} belongs to application {record.name!r} ({record.load}), not "
            f"{app.name!r} ({spec}): give {app.name!r} a data directory of its own, or "
            f"use {record.load} here"
        )


def claim(data: Path, app: App, spec: str) -> None:
    """Record `app` as `data`'s application, after checking that it may be: no other
    application's, and every event already in the log readable by its classes."""
    record = recorded_app(data)
    _refuse_other(data, app, spec, record)
    check_log_readable(data, app)
    new = AppRecord(app.name, app_spec(spec), app.fingerprint())
    if new == record:
        return
    data.mkdir(parents=True, exist_ok=True)
    path = DataDir(data).app
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"name": new.name, "load": new.load, "fingerprint": new.fingerprint}))
    tmp.replace(path)


def check_log_readable(data: Path, app: App) -> None:
    """Raise AppError if `data`'s log holds an event `app`'s classes cannot read."""
    if not DataDir(data).has_log():
        return
    try:
        LogReader.open(data, app.layout()).check_readable()
    except SchemaError as err:
        raise AppError(f"application {app.name!r}: {err}") from None


def app_for(data: Path, spec: str | None) -> App:
    """The application a command on `data` works with: `spec` (refused if `data`
    belongs to another), or else the one `data` records."""
    record = recorded_app(data)
    if spec is not None:
        app = load_app(spec)
        _refuse_other(data, app, spec, record)
        return app
    if record is None:
        raise AppError(
            f"{data}: no application recorded here ({DataDir(data).app} is written by "
            "`cqrsflow run`); pass --app APP, e.g. --app bank or --app path/to/app.py:APP"
        )
    return load_app(record.load)
