#   Licensed under the Apache License, Version 2.0 (the "License"); you may
#   not use this file except in compliance with the License. You may obtain
#   a copy of the License at
#
#        http://www.apache.org/licenses/LICENSE-2.0
#
#   Unless required by applicable law or agreed to in writing, software
#   distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#   WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#   License for the specific language governing permissions and limitations
#   under the License.

"""Running ``backup run`` (issue 14): the targets :mod:`run_plan` chose,
``parallel`` at a time, each by the procedure of its single verb.

* A volume goes through :func:`volume_choice.backup_volume` (the method
  chosen once per availability zone by :func:`run_plan.plan`), a server
  through :func:`server_plan.prepare` and
  :func:`server_backup.backup_server`, exactly as ``backup volume
  create`` and ``backup server create`` do. Each resource has its own run
  ID and so its own cleanup stack and temporaries.
* Workers are threads. openstacksdk's ``Connection`` keeps per-instance
  state (its proxies, their microversions) and is not meant for
  concurrent use, so every worker slot has its own ``Connection`` built
  from the command's ``CloudRegion`` (``Connection(config=...)``): they
  share the keystoneauth session (its token refresh is locked) and the
  cloud's settings, not the proxies.
* One failed resource does not stop the others: it becomes a ``failed``
  row with its reason.
* Signals (:func:`cleanup.cancelling`): the first SIGINT/SIGTERM starts
  nothing more; each resource in progress stops at its next poll and its
  own cleanup stack removes what it created; the ones not started are
  ``skipped``. A second signal stops the cleanups' waits (leftovers are
  listed with their removal commands). The rows of what finished are
  still reported, and the command ends with 128 + the signal.
* ``--then-prune``: after the backups, each source whose backup in this
  run is ``ok`` is pruned by the retention policy (never one that failed
  or did not run).

Plain module: takes an openstacksdk ``Connection``; no cliff.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import datetime
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from osc_backup.common import backup_set
from osc_backup.common import cleanup
from osc_backup.common import errors
from osc_backup.common import retention
from osc_backup.common import tags
from osc_backup.common import waits
from osc_backup.common.progress import Prefixed, Reporter
from osc_backup.common.text import printable
from osc_backup.procedures import catalog
from osc_backup.procedures import run_plan
from osc_backup.procedures import server_backup
from osc_backup.procedures import server_plan
from osc_backup.procedures import volume_backup
from osc_backup.procedures import volume_choice
from osc_backup.procedures import volume_image
from osc_backup.procedures.run_plan import ResourceResult, Target

GiB = 1024 ** 3

#: ``--parallel`` by default
DEFAULT_PARALLEL = 4
#: seconds between two progress lines while nothing finishes
PROGRESS_EVERY = 15.0
#: how often the main thread looks at its workers (and signals), seconds
_TICK = 0.2

INTERRUPTED = 'interrupted'


@dataclass
class Options:
    """The options of ``backup run`` that its procedures see."""

    #: 'auto', 'image' or 'backup'
    method: str = volume_choice.AUTO
    incremental: bool = False
    #: a directory: each resource's backup sets go into their own
    #: subdirectory of it (:func:`resource_directory`)
    download: str | None = None
    #: seconds per resource (each has its own deadline)
    timeout: float = 3600.0
    parallel: int = DEFAULT_PARALLEL
    #: --then-prune: the retention policy applied to each ok source
    prune: retention.Policy | None = None
    #: --then-prune: how each source's backups are grouped
    #: (:func:`catalog.plan_prune`'s ``group_by``; always within the source)
    prune_group_by: tuple[str, ...] = catalog.GROUP_FIELDS
    #: --then-prune: the time zone that cuts the calendar periods
    prune_tz: datetime.tzinfo = datetime.UTC
    #: Cinder backup path: the backup container of every backup
    container: str | None = None
    #: the description of every backup (image property or Cinder backup
    #: description), as the single verbs' --description
    description: str | None = None
    #: keep each resource's temporaries (their removal commands are
    #: printed), as the single verbs' --keep-temporary
    keep_temporary: bool = False
    interval: float | None = waits.DEFAULT_INTERVAL

    def image_only(self) -> list[str]:
        return ['--download'] if self.download is not None else []

    def backup_only(self) -> list[str]:
        given = ['--incremental'] if self.incremental else []
        if self.container is not None:
            given.append('--container')
        return given

    def describe(self) -> list[str]:
        """The options every resource's backup gets, one line each
        (``--dry-run`` prints them)."""
        lines = []
        if self.container is not None:
            lines.append(
                f'Cinder backup container: {printable(self.container)}'
            )
        if self.description is not None:
            lines.append(f'Description: {printable(self.description)}')
        if self.keep_temporary:
            lines.append('Temporaries are kept (--keep-temporary); their '
                         'removal commands are printed')
        if self.prune is not None:
            lines.append(
                'Then prune each ok source, grouped by '
                f"'{','.join(self.prune_group_by)}', calendar periods in "
                f'{self.prune_tz}'
            )
        return lines


def check(opts: Options) -> None:
    """The options on their own, before anything is looked up.

    :raises errors.InvalidInput: one clear line.
    """
    if opts.parallel < 1:
        raise errors.InvalidInput('--parallel must be 1 or more.')
    if opts.timeout <= 0:
        raise errors.InvalidInput('--timeout must be a positive number.')
    image_only, backup_only = opts.image_only(), opts.backup_only()
    if image_only and backup_only:
        raise errors.InvalidInput(
            f'{", ".join(image_only)} only applies to the image path and '
            f'{", ".join(backup_only)} only to the Cinder backup path: '
            'they cannot be combined.'
        )
    if opts.method == volume_choice.BACKUP and image_only:
        raise errors.InvalidInput(
            '--download cannot be used with --via-backup: a Cinder backup '
            'cannot leave the cloud through the API. Use --via-image '
            '--download <directory>.'
        )
    if opts.method == volume_choice.IMAGE and backup_only:
        verb = 'applies' if len(backup_only) == 1 else 'apply'
        raise errors.InvalidInput(
            f'{", ".join(backup_only)} only {verb} to the Cinder backup '
            'path (--via-backup).'
        )
    if opts.container is not None and not opts.container.strip():
        raise errors.InvalidInput('--container must not be empty.')
    if opts.prune is None and (
        opts.prune_group_by != catalog.GROUP_FIELDS
        or opts.prune_tz is not datetime.UTC
    ):
        raise errors.InvalidInput('--group-by and --time-zone need '
                                  '--then-prune.')
    if 'source' not in opts.prune_group_by:
        raise errors.InvalidInput(
            "--group-by: backup run prunes each source on its own: give "
            "'source,kind' (the default) or 'source'."
        )
    if opts.download is not None:
        volume_image.check_directory(opts.download)
    if opts.prune is not None and opts.prune.is_empty():
        raise errors.InvalidInput(
            '--then-prune needs a retention rule (--keep-last, '
            '--keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, '
            '--keep-yearly or --keep-within).'
        )


def prepare(
    conn: Any, targets: Sequence[Target], opts: Options, *, dry_run: bool
) -> list[ResourceResult]:
    """Choose each volume's method (once per availability zone; a real
    run may probe) and return the planned rows (``--dry-run``'s output).

    :raises errors.InvalidInput: nothing was created.
    """
    check(opts)
    return run_plan.plan(
        conn, targets, opts.method, image_only=opts.image_only(),
        backup_only=opts.backup_only(), probe=not dry_run,
    )


def resource_directory(download: str, target: Target) -> str:
    """``<download>/<type>-<ID>-<name>``: the resource's own directory
    under ``--download``, every part made safe (IDs and names are the
    cloud's text); created 0700 when missing.

    :raises errors.BackupError: it exists and is not a plain directory
        (e.g. a symbolic link).
    """
    name = backup_set.safe_name(
        f'{target.kind}-{target.id}-{target.name}'.rstrip('-'), limit=120
    )
    path = os.path.join(download, name)
    try:
        os.mkdir(path, backup_set.DIR_MODE)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise errors.BackupError(
                f"--download: '{printable(path)}' exists and is not a "
                'directory (symbolic links are not followed).'
            ) from None
    return path


def clone_connection(conn: Any) -> Any:
    """A ``Connection`` of its own for a worker (see the module
    docstring): the same cloud settings and keystoneauth session."""
    from openstack import connection

    return connection.Connection(config=conn.config)


@dataclass
class Report:
    """What ``backup run`` did: one row per target, in their order."""

    results: list[ResourceResult]
    #: wall time, seconds
    duration: float
    #: the signal that stopped the run, if any
    interrupted: str | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> run_plan.Summary:
        return run_plan.summarize(self.results, self.duration)

    def exit_code(self) -> int:
        if self.interrupted:
            return errors.Interrupted(self.interrupted).exit_code
        return run_plan.exit_code(self.results)


class _Progress:
    """done/total, bytes and ETA on the reporter's progress lines (a
    terminal only: ``Reporter.step``)."""

    def __init__(self, reporter: Reporter, targets: Sequence[Target]):
        self.reporter = reporter
        self.started = time.monotonic()
        self.shown = self.started
        sizes = {
            t.id: float(getattr(t.resource, 'size', None) or 0)
            for t in targets if t.kind == run_plan.VOLUME
        }
        known = [s for s in sizes.values() if s > 0]
        mean = sum(known) / len(known) if known else 1.0
        #: a guess of each target's work (GiB; servers: an average volume)
        self.weight = {t.id: sizes.get(t.id) or mean for t in targets}
        self.total = len(targets)
        self.done: list[ResourceResult] = []

    def finished(self, result: ResourceResult) -> None:
        self.done.append(result)
        self.show()

    def show(self) -> None:
        now = time.monotonic()
        self.shown = now
        total_weight = sum(self.weight.values()) or 1.0
        done_weight = sum(self.weight.get(r.resource, 0.0) for r in self.done)
        size = sum(r.size_bytes or 0 for r in self.done)
        failed = sum(1 for r in self.done if r.result != run_plan.OK)
        line = (
            f'{len(self.done)}/{self.total} done'
            + (f' ({failed} failed)' if failed else '')
            + f', {size / GiB:.1f} GiB'
        )
        elapsed = now - self.started
        if 0 < done_weight < total_weight:
            eta = elapsed * (total_weight - done_weight) / done_weight
            line += f', ETA {int(eta) // 60}:{int(eta) % 60:02d}'
        self.reporter.step(line)

    def tick(self) -> None:
        if time.monotonic() - self.shown >= PROGRESS_EVERY:
            self.show()


class _Gates:
    """One lock per shared :class:`volume_choice.Choice`: while a zone's
    automatic choice is only being tried (a member who cannot list
    services), its volumes go one at a time, so that a rejection by Cinder
    is learned once (one rejected record, the others take the image
    path), not once per volume."""

    def __init__(self) -> None:
        self._locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()

    def lock(self, choice: volume_choice.Choice) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(id(choice), threading.Lock())


def _bytes(result: dict[str, Any]) -> int | None:
    """The size of one backup in bytes (a Cinder backup records GiB)."""
    size = result.get('size')
    if size is None:
        return None
    if result.get('method') == volume_backup.METHOD:
        return int(size) * GiB
    return int(size)


def _backup_volume(
    conn: Any, target: Target, opts: Options, run: tags.Run,
    reporter: Reporter, gates: _Gates,
) -> tuple[str, list[str], int | None, str]:
    # the listing may be minutes old: the procedures decide by the status
    volume = conn.block_storage.get_volume(target.id)
    choice = target.choice
    if choice is None:  # pragma: no cover - prepare() sets it
        raise errors.BackupError(f'{target.label()}: no method chosen.')
    directory = (
        resource_directory(opts.download, target)
        if opts.download is not None else None
    )
    image_opts = volume_image.Options(
        description=opts.description, timeout=opts.timeout,
        interval=opts.interval, keep_temporary=opts.keep_temporary,
        download=directory,
    )
    backup_opts = volume_backup.Options(
        description=opts.description, incremental=opts.incremental,
        container=opts.container, timeout=opts.timeout,
        interval=opts.interval,
    )

    def backup() -> dict[str, Any]:
        assert choice is not None
        return volume_choice.backup_volume(
            conn, volume, choice, image_opts, backup_opts, run=run,
            reporter=reporter,
        )

    if not choice.confirmed:
        with gates.lock(choice):
            if not choice.confirmed:
                result = backup()
                choice.confirmed = True
                return _volume_row(result)
    return _volume_row(backup())


def _volume_row(
    result: dict[str, Any]
) -> tuple[str, list[str], int | None, str]:
    backup_id = result.get('backup_id') or result.get('image_id')
    return (
        str(result['method']), [str(backup_id)], _bytes(result),
        str(result.get('method_reason') or ''),
    )


def _backup_server(
    conn: Any, target: Target, opts: Options, run: tags.Run,
    reporter: Reporter,
) -> tuple[str, list[str], int | None, str]:
    server = conn.compute.get_server(target.id)
    directory = (
        resource_directory(opts.download, target)
        if opts.download is not None else None
    )
    sopts = server_plan.Options(
        method=opts.method, description=opts.description,
        incremental=opts.incremental, container=opts.container,
        timeout=opts.timeout, interval=opts.interval,
        keep_temporary=opts.keep_temporary, download=directory,
    )
    plan = server_plan.prepare(conn, server, sopts, run, probe=True)
    result = server_backup.backup_server(
        conn, plan, sopts, run=run, reporter=reporter,
    )
    methods = sorted({
        str(a['method']) for a in result['artifacts'] if a.get('method')
    })
    ids = [str(a['id']) for a in result['artifacts'] if a.get('id')]
    sizes = [_bytes(d.result) for d in plan.disks]
    size = sum(s for s in sizes if s is not None) if any(
        s is not None for s in sizes
    ) else None
    return (
        '+'.join(methods) or opts.method, ids, size,
        run_plan.SERVER_REASON,
    )


def _one_line(exc: BaseException) -> str:
    return errors.describe(exc)


def backup_one(
    conn: Any, target: Target, opts: Options, *, reporter: Reporter,
    gates: _Gates | None = None,
) -> ResourceResult:
    """Back up one target with its own run (ID, cleanup stack); never
    raises: a failure, an interrupt included, is a ``failed`` row."""
    started = time.monotonic()
    run = tags.Run()
    label = target.label()
    rep = Prefixed(reporter, label, steps=False)
    try:
        if target.kind == run_plan.SERVER:
            method, ids, size, reason = _backup_server(
                conn, target, opts, run, rep
            )
        else:
            method, ids, size, reason = _backup_volume(
                conn, target, opts, run, rep, gates or _Gates()
            )
    except errors.Interrupted as exc:
        # complete backups the interrupted run keeps (e.g. an active image
        # whose download was interrupted): in the row, so they are found
        error = f'{INTERRUPTED} ({exc.signame})'
        if exc.detail:
            error += f': {exc.detail}'
        return run_plan.result_for(
            target, run_plan.FAILED, backups=exc.kept, error=error,
            duration=time.monotonic() - started,
        )
    except Exception as exc:
        text = str(exc)
        if '\n' in text:
            # e.g. the leftovers a cleanup could not remove, with the
            # commands that remove them: in full on stderr
            rep.note(text)
        return run_plan.result_for(
            target, run_plan.FAILED, error=_one_line(exc),
            duration=time.monotonic() - started,
        )
    return run_plan.result_for(
        target, run_plan.OK, method=method, reason=reason, backups=ids,
        size_bytes=size, duration=time.monotonic() - started,
    )


def execute(
    conn: Any,
    targets: Sequence[Target],
    opts: Options,
    *,
    reporter: Reporter,
    connect: Callable[[Any], Any] = clone_connection,
    token: waits.Cancellation | None = None,
) -> Report:
    """Back up ``targets`` (prepared: :func:`prepare` chose the methods),
    ``opts.parallel`` at a time; then ``--then-prune``. Must be called
    from the main thread (it handles SIGINT/SIGTERM for its workers).

    :param connect: makes each worker slot's connection from ``conn``.
    """
    started = time.monotonic()
    token = token or waits.Cancellation()
    slots = max(1, min(opts.parallel, len(targets)))
    conns: queue.SimpleQueue[Any] = queue.SimpleQueue()
    for _ in range(slots if targets else 0):
        conns.put(connect(conn))
    gates = _Gates()
    progress = _Progress(reporter, targets)
    results: dict[int, ResourceResult] = {}

    def work(target: Target) -> ResourceResult:
        worker_conn = conns.get()
        try:
            return backup_one(
                worker_conn, target, opts, reporter=reporter, gates=gates
            )
        finally:
            conns.put(worker_conn)

    pending = list(enumerate(targets))
    running: dict[concurrent.futures.Future[ResourceResult], int] = {}
    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=slots, thread_name_prefix='osc-backup-run'
    )
    with cleanup.cancelling(token, reporter):
        try:
            while pending or running:
                while (
                    pending and len(running) < slots and not token.cancelled
                ):
                    index, target = pending.pop(0)
                    # the worker sees the cancellation and the command's
                    # --cleanup-timeout (context variables)
                    ctx = contextvars.copy_context()
                    running[pool.submit(ctx.run, work, target)] = index
                if not running:
                    break
                done, _ = concurrent.futures.wait(
                    running, timeout=_TICK,
                    return_when=concurrent.futures.FIRST_COMPLETED,
                )
                for future in done:
                    index = running.pop(future)
                    results[index] = future.result()
                    progress.finished(results[index])
                progress.tick()
        except BaseException:
            token.stop_waiting('SIGINT')
            raise
        finally:
            pool.shutdown(wait=True)
        for index, target in pending:
            results[index] = run_plan.result_for(
                target, run_plan.SKIPPED,
                error=f'not started: {INTERRUPTED} ({token.signame})',
            )
        ordered = [results[i] for i in range(len(targets))]
        if opts.prune is not None and not token.cancelled:
            try:
                prune_sources(conn, ordered, opts.prune, reporter,
                              timeout=opts.timeout,
                              group_by=opts.prune_group_by,
                              tz=opts.prune_tz)
            except errors.Interrupted:
                pass  # the rows say which sources were not pruned
    return Report(
        results=ordered, duration=time.monotonic() - started,
        interrupted=token.signame,
    )


def prune_sources(
    conn: Any,
    results: Sequence[ResourceResult],
    policy: retention.Policy,
    reporter: Reporter,
    *,
    timeout: float,
    now: datetime.datetime | None = None,
    group_by: tuple[str, ...] = catalog.GROUP_FIELDS,
    tz: datetime.tzinfo = datetime.UTC,
) -> None:
    """``--then-prune``: apply ``policy`` to the backups of each source
    whose backup in this run is ``ok`` (as ``backup prune --source
    <ID>`` would, per source and kind), deleting only backups of that
    source. Records the outcome in each row (``pruned``,
    ``prune_error``); a failure does not stop the others."""
    ok = [r for r in results if r.result == run_plan.OK]
    if not ok:
        return
    try:
        cat = catalog.load(conn, reporter)
    except Exception as exc:
        for row in ok:
            row.prune_error = (
                f'prune: could not list the backups: {_one_line(exc)}'
            )
        return
    now = now or datetime.datetime.now(datetime.UTC)
    for row in ok:
        label = f'{row.type} {row.resource}'
        reporter.step(f'Pruning the backups of {label}')
        selected = catalog.select(cat, catalog.Filters(sources={row.resource}))
        plan = catalog.plan_prune(cat, selected, policy, now=now,
                                  group_by=group_by, tz=tz)
        # a unit of another source (a server run that holds this volume)
        # is never this source's to prune
        order = [u for u in plan.order if u.source_id == row.resource]
        outcomes = catalog.delete_units(
            conn, order, reporter, timeout=waits.Deadline(timeout)
        )
        row.pruned = [o.unit.id for o in outcomes if not o.failed]
        problems = [f'{o.unit.id}: {o.result}' for o in outcomes if o.failed]
        if problems:
            row.prune_error = 'prune: ' + '; '.join(problems)
