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

"""The catalog of what osc-backup made, and its removal (``backup list``,
``show``, ``delete``, ``prune``).

What the tool made is read from the records it writes, never guessed
from names:

* **images** of the current project carrying ``osc_backup_tool`` =
  ``osc-backup`` and a known ``osc_backup_method``: ``image``
  (``volume-image``) and ``server-image`` (a server's root disk). One
  paginated ``GET /v2/images`` filtered by that property and the owner
  (Glance filters on any property); the record is checked again here.
  An image that still has the tool's temporary name is an upload in
  progress (or a leftover for ``backup cleanup``), not a backup. When
  several images carry the same record (an image a user uploaded from a
  volume that was restored from a backup image inherits that image's
  record through Cinder's image metadata), only the first one created
  is the backup; the copies are never listed nor touched;
* **Cinder backups** whose metadata (microversion 3.43) carries the same
  record with method ``backup``: one paginated ``GET /backups/detail``;
  members cannot filter on metadata, so that filter is applied here. On a
  cloud without backup metadata the tool's backups cannot be told from
  anybody else's, and none are listed (a warning says so);
* **local backup sets** under a directory, from their validated
  manifests (:mod:`osc_backup.common.backup_set`).

Chains: an incremental backup records the backup Cinder built it on
(``osc_backup_parent_backup_id``). For incrementals without that record
(made by an older osc-backup, or by hand), the parent is inferred as
Cinder chose it: the backup of the same volume with the newest
``data_timestamp`` among those created before it (failed ones excepted);
:attr:`Record.chain` says ``inferred``. A backup of ours that backups we
did not make depend on, or that Cinder says has dependents we cannot
find, is held: never deleted.

A server run (a root disk image and the images or backups of its
volumes, tied by ``osc_backup_server_id`` and the run ID) is one unit
for ``prune`` and for ``delete --run``.

Plain module: takes an openstacksdk ``Connection``; no cliff.
"""

from __future__ import annotations

import datetime
import logging
import os
import urllib.parse
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from openstack import exceptions as sdk_exc
from openstack.image.v2 import image as _image

from osc_backup.common import backup_set
from osc_backup.common import errors
from osc_backup.common import records
from osc_backup.common import retention
from osc_backup.common import tags
from osc_backup.common import waits
from osc_backup.common.progress import Reporter
from osc_backup.procedures import server_manifest

LOG = logging.getLogger(__name__)

GiB = 1024**3

KIND_VOLUME_IMAGE = 'volume-image'
KIND_VOLUME_BACKUP = 'volume-backup'
KIND_SERVER_IMAGE = 'server-image'
#: a whole server run, as one unit of ``prune``
KIND_SERVER_RUN = 'server-run'
KINDS = (KIND_VOLUME_IMAGE, KIND_VOLUME_BACKUP, KIND_SERVER_IMAGE)

#: osc_backup_method -> kind
METHOD_KINDS = {
    'image': KIND_VOLUME_IMAGE,
    'backup': KIND_VOLUME_BACKUP,
    'server-image': KIND_SERVER_IMAGE,
}

#: statuses of a complete backup (the only ones prune decides about)
COMPLETE = ('active', 'available', 'saved')

#: Glance's page size (its default api_limit_max)
PAGE = 1000

#: what ``--group-by`` may name
GROUP_FIELDS = ('source', 'kind')

DELETE_TIMEOUT = 600.0

CHAIN_RECORDED = 'recorded'
CHAIN_INFERRED = 'inferred'


@dataclass
class Record:
    """One backup the tool made, as the catalog shows it."""

    id: str
    kind: str
    name: str | None
    status: str | None
    source_id: str | None
    source_name: str | None
    created: datetime.datetime | None
    #: bytes (a Cinder backup: the volume size)
    size: int | None = None
    consistency: str | None = None
    run_id: str | None = None
    server_id: str | None = None
    server_name: str | None = None
    #: the backup it builds on (an incremental)
    depends_on: str | None = None
    #: how ``depends_on`` is known: 'recorded' or 'inferred'
    chain: str | None = None
    is_incremental: bool = False
    #: Cinder's has_dependent_backups
    has_dependents: bool = False
    #: backups that build on it (filled by the catalog)
    dependents: list[str] = field(default_factory=list)
    #: dependents osc-backup did not make (it must never be deleted)
    foreign_dependents: list[str] = field(default_factory=list)
    #: the Barbican key it needs (an encrypted volume's)
    key_id: str | None = None
    #: the osc_backup_* record as stored
    record: dict[str, str] = field(default_factory=dict)
    #: a local set: its manifest
    path: str | None = None
    #: a local set: the server manifest that names it (kept by prune)
    part_of: str | None = None
    #: 'image', 'backup' or 'set'
    resource_type: str = 'image'
    #: the SDK resource (a Glance image, a Cinder backup) or BackupSet
    resource: Any = field(default=None, repr=False, compare=False)

    @property
    def complete(self) -> bool:
        return (self.status or '').lower() in COMPLETE

    @property
    def group_source(self) -> str:
        """What ``--group-by source`` groups by: the server of a server
        run's parts, else the source."""
        return self.server_id or self.source_id or self.id


@dataclass
class Catalog:
    records: list[Record] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def by_id(self) -> dict[str, Record]:
        return {r.id: r for r in self.records}

    def runs(self) -> dict[str, list[Record]]:
        """Server runs: run ID -> its parts."""
        found: dict[str, list[Record]] = {}
        for rec in self.records:
            if rec.server_id and rec.run_id:
                found.setdefault(rec.run_id, []).append(rec)
        return found


# -- time ------------------------------------------------------------------


def parse_time(value: Any) -> datetime.datetime | None:
    """An ISO 8601 time from the cloud or a record; naive times are UTC
    (Cinder's are)."""
    if isinstance(value, datetime.datetime):
        when = value
    elif not value or not isinstance(value, str):
        return None
    else:
        text = value.strip()
        if text.endswith(('Z', 'z')):
            text = text[:-1] + '+00:00'
        try:
            when = datetime.datetime.fromisoformat(text)
        except ValueError:
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when


def _first_time(*values: Any) -> datetime.datetime | None:
    for value in values:
        when = parse_time(value)
        if when is not None:
            return when
    return None


# -- reading the cloud -----------------------------------------------------


def _ours(record: dict[str, Any]) -> bool:
    """A backup the tool made: its record, complete, and not a restore
    (an image ``backup server restore`` uploaded carries the backup's
    record and ``osc_backup_restored_from``; it is not a backup, so it is
    never listed nor pruned as one)."""
    return (
        record.get(records.TOOL) == tags.TOOL
        and record.get(records.METHOD) in METHOD_KINDS
        and record.get(records.TEMPORARY) != 'true'
        and records.RESTORED_FROM not in record
    )


def _record_of(props: dict[str, Any]) -> dict[str, str]:
    return {
        str(k): str(v) for k, v in props.items()
        if str(k).startswith(records.PREFIX)
    }


def list_images(image_proxy: Any, project_id: str | None) -> list[Any]:
    """The project's images that carry the tool's mark, in one paginated
    query (Glance filters on the property and the owner)."""
    first: dict[str, Any] = {records.TOOL: tags.TOOL, 'limit': PAGE}
    if project_id:
        first['owner'] = project_id
    params: dict[str, Any] | None = first
    url = '/images'
    found = []
    while url:
        resp = image_proxy.get(url, params=params)
        errors.check_response(resp, 'Listing images', (200,))
        body = resp.json()
        for item in body.get('images') or []:
            if isinstance(item, dict):
                # as openstacksdk's own listing does: 'self' (the image's
                # URL) cannot be a keyword argument
                attrs = {k: v for k, v in item.items() if k != 'self'}
                found.append(_image.Image.existing(**attrs))
        nxt = body.get('next')
        if not nxt:
            break
        query = urllib.parse.urlsplit(str(nxt)).query
        url, params = f'/images?{query}', None
    return found


def _image_record(image: Any) -> Record | None:
    props = dict(getattr(image, 'properties', None) or {})
    rec = _record_of(props)
    if not _ours(rec) or tags.tagged_name(image.name) is not None:
        return None
    kind = METHOD_KINDS[rec[records.METHOD]]
    if kind == KIND_VOLUME_BACKUP:
        return None
    if kind == KIND_SERVER_IMAGE:
        source_id = rec.get(records.SERVER_ID)
        source_name = rec.get(records.SERVER_NAME)
    else:
        source_id = rec.get(records.SOURCE_VOLUME_ID)
        source_name = rec.get(records.SOURCE_VOLUME_NAME)
    return Record(
        id=image.id,
        kind=kind,
        name=image.name,
        status=image.status,
        source_id=source_id,
        source_name=source_name,
        created=_first_time(rec.get(records.CREATED_AT), image.created_at),
        size=image.size,
        consistency=rec.get(records.CONSISTENCY),
        run_id=rec.get(records.RUN_ID),
        server_id=rec.get(records.SERVER_ID),
        server_name=rec.get(records.SERVER_NAME),
        key_id=str(props.get('cinder_encryption_key_id') or '') or None,
        record=rec,
        resource_type='image',
        resource=image,
    )


def _identity(rec: Record) -> tuple[str | None, ...]:
    """What no two backups of the tool share: a copy of an image inherits
    its record whole."""
    r = rec.record
    return (
        r.get(records.RUN_ID), r.get(records.METHOD),
        r.get(records.SOURCE_VOLUME_ID), r.get(records.SERVER_ID),
        r.get(records.SERVER_DISK), r.get(records.DEVICE),
    )


def _drop_copies(found: list[Record]) -> list[Record]:
    """Only the first image created with a record is the backup."""
    firsts: dict[tuple[str | None, ...], Record] = {}
    for rec in sorted(
        found, key=lambda r: (str(r.resource.created_at or ''), r.id)
    ):
        firsts.setdefault(_identity(rec), rec)
    kept = {id(r) for r in firsts.values()}
    for rec in found:
        if id(rec) not in kept:
            LOG.debug('Image %s carries the record of image %s: a copy',
                      rec.id, firsts[_identity(rec)].id)
    return [r for r in found if id(r) in kept]


def _backup_record(backup: Any) -> Record | None:
    rec = _record_of(dict(backup.metadata or {}))
    if not _ours(rec) or METHOD_KINDS[rec[records.METHOD]] != (
        KIND_VOLUME_BACKUP
    ):
        return None
    return Record(
        id=backup.id,
        kind=KIND_VOLUME_BACKUP,
        name=backup.name,
        status=backup.status,
        source_id=backup.volume_id or rec.get(records.SOURCE_VOLUME_ID),
        source_name=rec.get(records.SOURCE_VOLUME_NAME),
        created=_first_time(rec.get(records.CREATED_AT), backup.created_at),
        size=int(backup.size) * GiB if backup.size is not None else None,
        consistency=rec.get(records.CONSISTENCY),
        run_id=rec.get(records.RUN_ID),
        server_id=rec.get(records.SERVER_ID),
        server_name=rec.get(records.SERVER_NAME),
        is_incremental=bool(backup.is_incremental),
        has_dependents=bool(backup.has_dependent_backups),
        key_id=(
            getattr(backup, 'encryption_key_id', None)
            or rec.get(records.ENCRYPTION_KEY_ID)
        ),
        record=rec,
        resource_type='backup',
        resource=backup,
    )


def _backup_time(backup: Any) -> datetime.datetime:
    return _first_time(backup.created_at) or datetime.datetime.min.replace(
        tzinfo=datetime.UTC
    )


def _data_time(backup: Any) -> datetime.datetime:
    return _first_time(backup.data_timestamp, backup.created_at) or (
        datetime.datetime.min.replace(tzinfo=datetime.UTC)
    )


def infer_parents(backups: Sequence[Any]) -> dict[str, tuple[str, str]]:
    """{incremental backup ID: (parent ID, 'recorded' or 'inferred')}.

    Recorded: the tool's ``osc_backup_parent_backup_id``. Inferred (see
    the module docstring): the backup of the same volume, created before
    it and not failed, with the newest ``data_timestamp``.
    """
    parents: dict[str, tuple[str, str]] = {}
    for backup in backups:
        if not backup.is_incremental:
            continue
        meta = dict(backup.metadata or {})
        recorded = meta.get(records.PARENT_BACKUP_ID)
        if recorded and meta.get(records.TOOL) == tags.TOOL:
            parents[backup.id] = (str(recorded), CHAIN_RECORDED)
            continue
        made = _backup_time(backup)
        candidates = [
            b for b in backups
            if b.id != backup.id and b.volume_id == backup.volume_id
            and (b.status or '') not in ('error', 'creating')
            and _backup_time(b) < made
        ]
        if candidates:
            parent = max(candidates, key=lambda b: (_data_time(b), b.id))
            parents[backup.id] = (parent.id, CHAIN_INFERRED)
    return parents


def _link(found: list[Record], backups: Sequence[Any]) -> None:
    """Fill depends_on, dependents and foreign dependents."""
    by_id = {r.id: r for r in found}
    parents = infer_parents(backups)
    children: dict[str, list[str]] = {}
    for child, (parent, how) in parents.items():
        children.setdefault(parent, []).append(child)
        if child in by_id:
            by_id[child].depends_on = parent
            by_id[child].chain = how
    for rec in found:
        if rec.resource_type != 'backup':
            continue
        kids = children.get(rec.id, [])
        rec.dependents = sorted(k for k in kids if k in by_id)
        rec.foreign_dependents = sorted(k for k in kids if k not in by_id)


def load(conn: Any, reporter: Reporter | None = None) -> Catalog:
    """Everything the tool made in the current project (see the module
    docstring): one paginated query for images, one for backups."""
    catalog = Catalog()
    try:
        project = conn.current_project_id
    except Exception:  # an unusual auth type: the owner filter is a bonus
        project = None
    images = list_images(conn.image, project)
    found = [r for r in map(_image_record, images) if r is not None]
    found = _drop_copies(found)
    backups = list(conn.block_storage.backups(details=True))
    ours = [r for r in map(_backup_record, backups) if r is not None]
    if backups and not any(b.metadata is not None for b in backups):
        catalog.warnings.append(
            'this cloud shows no backup metadata (Block Storage '
            'microversion 3.43): the Cinder backups osc-backup made '
            'cannot be recognized and are not listed'
        )
    found += ours
    _link(found, backups)
    catalog.records = sorted(
        found, key=lambda r: (r.created or _EPOCH, r.id), reverse=True
    )
    for text in catalog.warnings:
        if reporter is not None:
            reporter.warn(text)
    return catalog


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


# -- local sets ------------------------------------------------------------


def _set_record(found: backup_set.BackupSet) -> Record:
    manifest = found.manifest
    rec = {
        str(k): str(v) for k, v in (manifest.get('backup') or {}).items()
        if str(k).startswith(records.PREFIX)
    }
    image = manifest.get('image') or {}
    kind = METHOD_KINDS.get(rec.get(records.METHOD, ''), 'image')
    if kind == KIND_SERVER_IMAGE:
        source_id = rec.get(records.SERVER_ID)
        source_name = rec.get(records.SERVER_NAME)
    elif rec.get(records.SOURCE_VOLUME_ID):
        source_id = rec.get(records.SOURCE_VOLUME_ID)
        source_name = rec.get(records.SOURCE_VOLUME_NAME)
    else:
        source_id = image.get('id')
        source_name = image.get('name')
    enc = found.encryption or {}
    return Record(
        id=str(image.get('id') or manifest['data']['file']),
        kind=kind,
        name=image.get('name'),
        status='saved',
        source_id=source_id,
        source_name=source_name,
        created=_first_time(
            rec.get(records.CREATED_AT), image.get('created_at'),
            manifest.get('saved_at'),
        ),
        size=found.size,
        consistency=rec.get(records.CONSISTENCY),
        run_id=rec.get(records.RUN_ID),
        server_id=rec.get(records.SERVER_ID),
        server_name=rec.get(records.SERVER_NAME),
        key_id=enc.get('cinder_encryption_key_id'),
        record=rec,
        path=found.manifest_path,
        resource_type='set',
        resource=found,
    )


def _server_manifest_files(directory: str, catalog: Catalog) -> dict[
    str, str
]:
    """{real path of a file a server manifest names: that manifest}."""
    named: dict[str, str] = {}
    for here, dirs, files in os.walk(directory, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith('.')]
        for name in files:
            if not name.endswith(server_manifest.SUFFIX):
                continue
            path = os.path.join(here, name)
            if os.path.islink(path):
                continue
            try:
                manifest = server_manifest.load(path)
            except errors.BackupError as exc:
                catalog.warnings.append(f'skipped {path}: {exc}')
                continue
            for disk in manifest.get('disks') or []:
                artifact = (disk or {}).get('artifact') or {}
                for rel in artifact.get('files') or []:
                    try:
                        full = server_manifest.resolve(here, rel)
                    except errors.BackupError:
                        continue
                    named[full] = path
    return named


def load_local(
    directory: str, reporter: Reporter | None = None
) -> Catalog:
    """The backup sets under ``directory``, from their validated
    manifests; a set a server manifest names is part of that run."""
    if not os.path.isdir(directory):
        raise errors.InvalidInput(
            f"--dir: '{directory}' is not a directory."
        )
    catalog = Catalog()
    for path in backup_set.find_manifests(directory):
        try:
            found = backup_set.load_set(path)
        except errors.BackupError as exc:
            catalog.warnings.append(f'skipped {path}: {exc}')
            continue
        catalog.records.append(_set_record(found))
    named = _server_manifest_files(directory, catalog)
    for rec in catalog.records:
        data = os.path.realpath(rec.resource.data)
        if data in named:
            rec.part_of = named[data]
    catalog.records.sort(
        key=lambda r: (r.created or _EPOCH, r.id), reverse=True
    )
    for text in catalog.warnings:
        if reporter is not None:
            reporter.warn(text)
    return catalog


# -- selecting -------------------------------------------------------------


@dataclass
class Filters:
    #: IDs (and names) a record's source or server must match
    sources: set[str] | None = None
    kind: str | None = None
    run_id: str | None = None
    since: datetime.datetime | None = None
    until: datetime.datetime | None = None


def select(catalog: Catalog, filters: Filters) -> list[Record]:
    """The records that pass ``filters``; a server selects its runs whole
    (``--source <server>``)."""
    selected = []
    for rec in catalog.records:
        if filters.sources is not None and not (
            {rec.source_id, rec.server_id, rec.source_name, rec.server_name}
            & filters.sources
        ):
            continue
        if filters.kind and rec.kind != filters.kind:
            continue
        if filters.run_id and rec.run_id != filters.run_id:
            continue
        if filters.since and (rec.created is None
                              or rec.created < filters.since):
            continue
        if filters.until and (rec.created is None
                              or rec.created > filters.until):
            continue
        selected.append(rec)
    return selected


# -- units (prune) ---------------------------------------------------------


@dataclass
class Unit:
    """What prune keeps or deletes as a whole: a backup, or a server
    run."""

    id: str
    kind: str
    source_id: str
    source_name: str | None
    created: datetime.datetime
    parts: list[Record]
    depends_on: tuple[str, ...] = ()
    hold: str | None = None
    counted: bool = True

    @property
    def size(self) -> int:
        return sum(p.size or 0 for p in self.parts)


def _group_key(unit: Unit, group_by: Sequence[str]) -> Hashable:
    values = []
    for name in group_by:
        values.append(unit.source_id if name == 'source' else unit.kind)
    return tuple(values)


def units(
    records_: Iterable[Record], catalog: Catalog, *, whole_runs: bool = True
) -> list[Unit]:
    """``records_`` as units: with ``whole_runs`` (prune), server runs
    whole (with every part the catalog has, selected or not); other
    backups one by one."""
    chosen = list(records_)
    runs = catalog.runs() if whole_runs else {}
    result: dict[str, Unit] = {}
    unit_of: dict[str, str] = {}
    for rec in chosen:
        if rec.server_id and rec.run_id and rec.run_id in runs:
            if rec.run_id in result:
                continue
            parts = runs[rec.run_id]
            created = min(p.created or _EPOCH for p in parts)
            unit = Unit(
                id=rec.run_id, kind=KIND_SERVER_RUN,
                source_id=rec.server_id, source_name=rec.server_name,
                created=created, parts=parts,
            )
        else:
            unit = Unit(
                id=rec.id, kind=rec.kind,
                source_id=rec.source_id or rec.id,
                source_name=rec.source_name,
                created=rec.created or _EPOCH, parts=[rec],
            )
        result[unit.id] = unit
        for part in unit.parts:
            unit_of[part.id] = unit.id
    for unit in result.values():
        bases = []
        holds = []
        for part in unit.parts:
            if part.depends_on and part.depends_on in unit_of:
                base = unit_of[part.depends_on]
                if base != unit.id and base not in bases:
                    bases.append(base)
            if part.foreign_dependents:
                holds.append(
                    'base of ' + ', '.join(part.foreign_dependents)
                    + ' (not made by osc-backup)'
                )
            elif part.has_dependents and not part.dependents:
                holds.append('Cinder reports backups that depend on it')
            elif any(d not in unit_of for d in part.dependents):
                outside = [d for d in part.dependents if d not in unit_of]
                holds.append(
                    'base of ' + ', '.join(outside) + ' (not selected)'
                )
            if part.part_of:
                holds.append(f'part of server run {part.part_of}')
            if not part.complete:
                holds.append(f'incomplete ({part.status})')
                unit.counted = False
        unit.depends_on = tuple(bases)
        unit.hold = '; '.join(holds) or None
    return list(result.values())


@dataclass
class PrunePlan:
    decisions: list[retention.Decision]
    units: dict[str, Unit]
    #: the units to delete, in deletion order
    order: list[Unit]


def plan_prune(
    catalog: Catalog,
    selected: Iterable[Record],
    policy: retention.Policy,
    *,
    group_by: Sequence[str] = GROUP_FIELDS,
    now: datetime.datetime,
    tz: datetime.tzinfo = datetime.UTC,
) -> PrunePlan:
    """What the policy keeps and deletes among ``selected``.

    :raises retention.EmptyPolicy: no rule.
    """
    found = {u.id: u for u in units(selected, catalog)}
    entries = [
        retention.Entry(
            id=u.id, group=_group_key(u, group_by), created=u.created,
            depends_on=u.depends_on, hold=u.hold, counted=u.counted,
        )
        for u in found.values()
    ]
    decisions = retention.apply_policy(entries, policy, now=now, tz=tz)
    order = [found[e.id] for e in retention.deletion_order(decisions)]
    return PrunePlan(decisions=decisions, units=found, order=order)


# -- deleting --------------------------------------------------------------


@dataclass
class Outcome:
    unit: Unit
    result: str = ''
    failed: bool = False
    freed: int = 0


def _delete_part(
    conn: Any, rec: Record, timeout: float | waits.Deadline
) -> None:
    if rec.resource_type == 'set':
        backup_set.remove_set(rec.resource)
        return
    if rec.resource_type == 'backup':
        proxy, kind = conn.block_storage, 'backup'
        try:
            proxy.delete_backup(rec.id, ignore_missing=False)
        except sdk_exc.NotFoundException:
            return
    else:
        proxy, kind = conn.image, 'image'
        try:
            proxy.delete_image(rec.id, ignore_missing=False)
        except sdk_exc.NotFoundException:
            return
    waits.wait_for_delete(
        proxy, rec.resource if rec.resource is not None else rec.id,
        kind=kind, step=f'delete {kind} {rec.id}', timeout=timeout,
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, sdk_exc.HttpException):
        return str(exc.details or exc)
    return str(exc)


def delete_units(
    conn: Any,
    order: Sequence[Unit],
    reporter: Reporter,
    *,
    timeout: float | waits.Deadline = DELETE_TIMEOUT,
) -> list[Outcome]:
    """Delete ``order`` (dependents before their bases), each waited
    until gone. A failure does not stop the rest, but a base whose
    dependent could not be deleted is not tried (it would break nothing,
    Cinder would refuse it)."""
    outcomes = []
    failed: set[str] = set()
    for unit in order:
        outcome = Outcome(unit)
        outcomes.append(outcome)
        blocking = sorted(
            u.id for u in order
            if u.id in failed and unit.id in u.depends_on
        )
        if blocking:
            outcome.failed = True
            outcome.result = (
                'not deleted: ' + ', '.join(blocking)
                + ' (depends on it) could not be deleted'
            )
            failed.add(unit.id)
            continue
        parts = sorted(
            unit.parts,
            key=lambda p: (p.created or _EPOCH, p.is_incremental, p.id),
            reverse=True,
        )
        problems = []
        for part in parts:
            what = part.path or f'{part.resource_type} {part.id}'
            reporter.step(f'Deleting {what}')
            try:
                _delete_part(conn, part, timeout)
                outcome.freed += part.size or 0
            except Exception as exc:
                LOG.debug('Deleting %s failed', part.id, exc_info=True)
                problems.append(f'{part.id}: {_reason(exc)}')
        if problems:
            outcome.failed = True
            outcome.result = 'failed: ' + '; '.join(problems)
            failed.add(unit.id)
        else:
            outcome.result = 'deleted'
    return outcomes


def find_record(
    catalog: Catalog, ident: str, *, refused: bool = False
) -> Record:
    """The record with ID (or else name) ``ident``.

    :raises errors.InvalidInput: none (not made by the tool), or several
        with that name.
    """
    for rec in catalog.records:
        if rec.id == ident:
            return rec
    named = [r for r in catalog.records if r.name == ident]
    if len(named) > 1:
        raise errors.InvalidInput(
            f"More than one backup is named '{ident}': use its ID."
        )
    if not named:
        raise errors.InvalidInput(
            f"'{ident}' is not a backup osc-backup made (no image or Cinder "
            'backup with its record has that ID or name)'
            + (': refused.' if refused else '.')
        )
    return named[0]


def resolve_for_delete(
    catalog: Catalog,
    ids: Sequence[str],
    *,
    runs: Sequence[str] = (),
    with_dependents: bool = False,
) -> list[Unit]:
    """The units ``backup delete`` removes, in deletion order.

    :raises errors.InvalidInput: an ID the tool did not make (or that
        does not exist), a backup with dependents without
        ``with_dependents``, or dependents the tool did not make.
    """
    by_id = catalog.by_id()
    targets: dict[str, Record] = {}
    for ident in ids:
        found_rec = find_record(catalog, ident, refused=True)
        targets[found_rec.id] = found_rec
    for run_id in runs:
        parts = [r for r in catalog.records if r.run_id == run_id]
        if not parts:
            raise errors.InvalidInput(
                f"No backup of run '{run_id}' made by osc-backup found."
            )
        for rec in parts:
            targets[rec.id] = rec
    # everything that depends on a target, transitively
    todo = list(targets.values())
    extra: dict[str, Record] = {}
    while todo:
        rec = todo.pop()
        if rec.foreign_dependents:
            raise errors.InvalidInput(
                f'Backup {rec.id} is the base of '
                f'{", ".join(rec.foreign_dependents)}, which osc-backup '
                'did not make: refused (delete those first).'
            )
        if rec.has_dependents and not rec.dependents:
            raise errors.InvalidInput(
                f'Cinder reports backups that depend on {rec.id}, and '
                'none of them is one osc-backup knows: refused.'
            )
        for dep in rec.dependents:
            if dep not in targets and dep not in extra:
                extra[dep] = by_id[dep]
                todo.append(by_id[dep])
    if extra and not with_dependents:
        raise errors.InvalidInput(
            'Refused: other backups depend on what you asked to delete '
            '(Cinder refuses to delete a backup that incremental backups '
            'build on): ' + ', '.join(sorted(extra))
            + '. Use --with-dependents to delete them too, newest first.'
        )
    chosen = [*targets.values(), *extra.values()]
    found = {u.id: u for u in units(chosen, catalog, whole_runs=False)}
    decisions = [
        retention.Decision(retention.Entry(
            id=u.id, group=None, created=u.created, depends_on=u.depends_on,
        ))
        for u in found.values()
    ]
    return [found[e.id] for e in retention.deletion_order(decisions)]


def resolve_source(conn: Any, name_or_id: str) -> set[str]:
    """What ``--source`` matches: the volume or server it names now (by
    name or ID), and the text itself (a deleted source's ID or recorded
    name).

    :raises errors.InvalidInput: the name is ambiguous.
    """
    found = {name_or_id}
    for finder, kind in (
        (lambda: conn.block_storage.find_volume, 'volume'),
        (lambda: conn.compute.find_server, 'server'),
    ):
        try:
            res = finder()(name_or_id, ignore_missing=True)
        except sdk_exc.DuplicateResource:
            raise errors.InvalidInput(
                f"More than one {kind} is named '{name_or_id}': use its ID."
            ) from None
        except Exception as exc:  # no compute service, say: the text
            LOG.debug('Cannot look up %s %s: %s', kind, name_or_id, exc)
            continue
        if res is not None:
            found.add(res.id)
    return found
