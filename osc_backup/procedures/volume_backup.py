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

"""Volume -> Cinder backup (the guide's preferred path), and the choice
between it and the Glance image path.

* ``available``: ``POST /backups``; the backup is ``offline`` (consistent).
* ``in-use``: ``POST /backups`` with ``force``; crash-consistent, warned.
* ``--incremental`` when the volume has no ``available`` backup yet: Cinder
  would refuse (400 "No backups available to do an incremental backup");
  we make a **full** backup instead and say so (``is_incremental`` false,
  a notice on stderr and in ``method_reason``), so a nightly
  ``--incremental`` job works from its first night on.
* The backup's metadata (microversion 3.43) records what a restore needs,
  with the same ``osc_backup_*`` keys as the image path's properties.

Detecting a working backup service (:func:`detect`)
---------------------------------------------------
Cinder (29, and every release since backups are scheduled by
cinder-scheduler) no longer checks for a backup service in the API when a
backup is created: ``backup.api.API.create`` writes the record and casts to
the scheduler, which, when no ``cinder-backup`` is up, sets the backup to
``error`` with ``fail_reason`` "Service not found for creating backup." and
puts the volume back. Such a record cannot be deleted while no backup
service runs (``API.delete`` also needs a backup host and answers
404 "Service cinder-backup could not be found."). Only ``delete`` and
``restore`` answer synchronously, and both act when a service is there.
So, reading only, in this order:

1. ``GET /os-services`` (admins, or clouds whose policy lets the user read
   services): an enabled ``cinder-backup`` that is ``up`` in the zone the
   backup goes to (Cinder's own rule) *and has reported recently* -> backup
   path, else image. Cinder calls a service ``up`` until
   ``service_down_time`` (60 s by default) has passed since its last report,
   so for a minute after a crash a dead service still looks ``up``; every
   Cinder service reports every ``report_interval`` (10 s by default). A
   ``cinder-backup`` whose ``updated_at`` is more than
   :data:`STALE_AFTER` (30 s: three report intervals) older than the newest
   report of any Cinder service counts as down. Comparing the services'
   own timestamps, not the local clock, keeps a skewed client clock out of
   it. A cloud with a ``report_interval`` above 10 s may see a live service
   taken for dead (then the image path is taken: slower, never wrong).
2. Plain members (403): if an earlier osc-backup run left a backup that
   the scheduler rejected for lack of a service, ask Cinder to delete it.
   "Service cinder-backup could not be found" -> still none: image path,
   nothing created. Accepted -> a service is back (and the useless record
   is gone): backup path.
3. Otherwise the backup path is *tried*: if Cinder rejects it for lack of a
   service (503 at the API on old releases, or the scheduler's ``error``),
   the run falls back to the image path. The rejected record is the one
   thing left behind (Cinder allows nobody to remove it until a backup
   service runs); the warning says so, and the next automatic run removes
   it by step 2 as soon as it can. At most one such record exists per
   project: while it is there, step 2 decides without creating anything.

Known limit (seen on the minicloud, Cinder 29): cinder-scheduler picks
backup hosts from the capabilities backup services last *reported* and
never forgets a service that stopped. The rejection of step 3 therefore
only happens when no backup service ever reported since the scheduler
started; a backup service that died afterwards gets the backup cast to it
(``scheduler/host_manager.py`` fills ``backup_service_states`` from the
reports, reads it without an ``is_up`` check and never removes an entry),
and the backup waits in ``creating`` (the volume in ``backing-up``) until
the service starts again, which marks it ``error`` and releases the volume
(``init_host`` cleans up incomplete backups). Only the services API (step
1) sees such a service as down. A running backup service takes a backup at
once and sets its availability zone, which every user can see; so a backup
that nobody has taken after :data:`PICKUP_TIMEOUT` ends the run with
:class:`NotTaken`, which says what is stuck and what an admin can do,
instead of a wait until ``--timeout``. No fall-back is possible then: the
volume stays ``backing-up``.

Plain module: takes an openstacksdk ``Connection``; no cliff.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from openstack import exceptions as sdk_exc

from osc_backup.common import errors
from osc_backup.common import records
from osc_backup.common import tags
from osc_backup.common import volumes
from osc_backup.common import waits
from osc_backup.common.cleanup import PARTIAL, Cleanup
from osc_backup.common.progress import Reporter
from osc_backup.procedures import volume_image

LOG = logging.getLogger(__name__)

METHOD = 'backup'
AUTO = 'auto'

#: Microversions of the Block Storage API
MV_METADATA = '3.43'
MV_AZ = '3.51'
MV_ENCRYPTION_KEY = '3.64'

#: volume status -> consistency of a backup taken in that status
CRASH_WARNING = volume_image.CRASH_WARNING

#: Metadata keys recorded on every backup (same as the image properties).
KEY_METHOD = records.METHOD
KEY_SOURCE_ID = records.SOURCE_VOLUME_ID
KEY_SOURCE_NAME = records.SOURCE_VOLUME_NAME
KEY_VOLUME_TYPE = records.VOLUME_TYPE
KEY_SIZE = records.VOLUME_SIZE_GB
KEY_BOOTABLE = records.BOOTABLE
KEY_ENCRYPTED = records.ENCRYPTED
KEY_CONSISTENCY = records.CONSISTENCY

#: What Cinder says when no backup service can take a request.
SCHEDULER_REJECTION = 'Service not found for creating backup'
API_REJECTION = 'Service cinder-backup could not be found'

BACKUP_FAILURES = ['error', 'error_deleting', 'deleted']

#: Cinder's default report_interval: how often each service reports.
REPORT_INTERVAL = 10.0
#: A cinder-backup whose last report is this much older than the newest
#: report of any Cinder service is taken for dead (see the module doc).
STALE_AFTER = 3 * REPORT_INTERVAL

#: A running backup service takes a backup within a second or two (it sets
#: the backup's availability zone, which every user can see). Cinder's
#: scheduler may instead have sent it to a backup service that stopped
#: after it last reported (see "Known limit" above).
PICKUP_TIMEOUT = 60.0


class NotTaken(errors.BackupError):
    """Cinder sent the backup to a backup service that does not answer."""


class NoBackupService(errors.BackupError):
    """Cinder has no backup service that could take the backup."""

    def __init__(self, message: str, *, leftover: str | None = None):
        super().__init__(message)
        #: ID of a rejected backup record Cinder keeps (cannot be deleted
        #: until a backup service runs), if any
        self.leftover = leftover


@dataclass
class Options:
    name: str | None = None
    description: str | None = None
    incremental: bool = False
    container: str | None = None
    properties: dict[str, str] = field(default_factory=dict)
    availability_zone: str | None = None
    wait: bool = True
    timeout: float = 3600.0
    interval: float | None = waits.DEFAULT_INTERVAL
    #: how long a backup may wait for a backup service to take it
    pickup_timeout: float = PICKUP_TIMEOUT
    #: see volume_image.Options.record and .consistency
    record: dict[str, str] = field(default_factory=dict)
    consistency: str | None = None


@dataclass
class Detection:
    """Which method ``auto`` takes, and why."""

    method: str
    reason: str
    #: False when the backup path is only being tried (a member could not
    #: confirm a service): a rejection then falls back to the image path
    confirmed: bool = True


# -- microversions -----------------------------------------------------
def supports(block_storage: Any, version: str) -> bool:
    """Whether the cloud's Block Storage API offers ``version``."""
    from openstack import utils as sdk_utils

    try:
        return bool(sdk_utils.supports_microversion(block_storage, version))
    except Exception as exc:  # endpoint discovery failed: assume not
        LOG.debug('Microversion discovery failed: %s', exc)
        return False


# -- detection ---------------------------------------------------------
def _service_missing(exc: BaseException) -> bool:
    text = str(getattr(exc, 'details', '') or '') + ' ' + str(exc)
    return 'cinder-backup' in text and 'could not be found' in text


def _rejected(backup: Any) -> bool:
    return backup.status == 'error' and SCHEDULER_REJECTION in str(
        backup.fail_reason or ''
    )


def _ours(backup: Any) -> bool:
    return (backup.metadata or {}).get(records.TOOL) == tags.TOOL


def _reported(service: Any) -> datetime.datetime | None:
    """When the service last reported (``updated_at``, UTC)."""
    text = getattr(service, 'updated_at', None)
    if not text:
        return None
    try:
        when = datetime.datetime.fromisoformat(str(text))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when


def _silence(service: Any, newest: datetime.datetime | None) -> float | None:
    """Seconds between the service's last report and the newest report of
    any Cinder service; None when the timestamps do not tell."""
    when = _reported(service)
    if when is None or newest is None:
        return None
    return (newest - when).total_seconds()


def detect(
    conn: Any,
    volume: Any,
    availability_zone: str | None = None,
    *,
    probe: bool = True,
) -> Detection:
    """Decide between the backup and the image path; see the module doc.

    :param probe: allow step 2 (deleting a rejected record of ours); off
        for --dry-run, which changes nothing.
    """
    bs = conn.block_storage
    zone = availability_zone or volume.availability_zone
    where = f" in zone '{zone}'" if zone else ''
    try:
        every = list(bs.services())
    except sdk_exc.HttpException as exc:
        LOG.debug('Cannot list services: %s', exc)
        every = None
    if every is not None:
        services = [s for s in every if s.binary == 'cinder-backup']
        reports = [r for r in map(_reported, every) if r is not None]
        newest = max(reports) if reports else None
        up = [
            s
            for s in services
            if s.status == 'enabled'
            and s.state == 'up'
            and (not zone or s.availability_zone == zone)
        ]
        fresh = [
            s for s in up
            if (_silence(s, newest) or 0.0) <= STALE_AFTER
        ]
        if fresh:
            return Detection(
                METHOD,
                f'cinder-backup is up{where} on {fresh[0].host} '
                '(services API)',
            )
        if up:
            quiet = int(_silence(up[0], newest) or 0)
            return Detection(
                volume_image.METHOD,
                f'cinder-backup on {up[0].host}{where} has not reported for '
                f'{quiet} s (more than {int(STALE_AFTER)} s behind the '
                'newest report of a Cinder service): it has stopped, '
                "although Cinder still calls it 'up' (services API)",
            )
        if services:
            return Detection(
                volume_image.METHOD,
                f'no enabled cinder-backup service is up{where} '
                '(services API)',
            )
        return Detection(
            volume_image.METHOD,
            'the cloud runs no cinder-backup service (services API)',
        )

    # A plain member: see the module docstring, step 2.
    try:
        rejected = [
            b
            for b in bs.backups(status='error')
            if _rejected(b) and _ours(b)
        ]
    except sdk_exc.HttpException as exc:
        LOG.debug('Cannot list backups: %s', exc)
        rejected = []
    if rejected and not probe:
        return Detection(
            volume_image.METHOD,
            f'backup {rejected[0].id} was rejected earlier for lack of a '
            'backup service (not re-checked in a dry run)',
            confirmed=False,
        )
    if rejected:
        old = rejected[0]
        try:
            # ignore_missing=False: Cinder's "no backup service" is a 404
            bs.delete_backup(old, ignore_missing=False)
        except sdk_exc.HttpException as exc:
            if _service_missing(exc):
                return Detection(
                    volume_image.METHOD,
                    'no backup service: Cinder still cannot delete backup '
                    f'{old.id}, which it rejected earlier for lack of one '
                    f'("{API_REJECTION}")',
                )
            LOG.debug('Could not delete rejected backup %s: %s', old.id, exc)
        else:
            return Detection(
                METHOD,
                'a backup service is back: Cinder accepted the deletion of '
                f'backup {old.id}, which it had rejected for lack of one',
            )
    return Detection(
        METHOD,
        'cannot list services (not an admin): trying the Cinder backup '
        'API; falls back to the image path if Cinder has no backup '
        'service',
        confirmed=False,
    )


# -- the backup path ---------------------------------------------------
def record_metadata(
    volume: Any, consistency: str, run: tags.Run
) -> dict[str, str]:
    """What a restore needs, as backup metadata (image-path keys)."""
    record = volume_image.record_properties(volume, consistency, run)
    record[KEY_METHOD] = METHOD
    return record


def has_full_backup(block_storage: Any, volume: Any) -> bool:
    """Whether Cinder has a backup to base an incremental one on."""
    return parent_backup(block_storage, volume) is not None


def parent_backup(block_storage: Any, volume: Any) -> Any | None:
    """The backup Cinder bases an incremental backup of ``volume`` on:
    its newest ``available`` backup by ``data_timestamp`` (Cinder's own
    rule); None when there is none."""
    available = [
        b for b in block_storage.backups(volume_id=volume.id)
        if b.status == 'available'
    ]
    if not available:
        return None
    return max(
        available,
        key=lambda b: str(b.data_timestamp or b.created_at or ''),
    )


def preflight(conn: Any, volume: Any, opts: Options) -> str:
    """Check what can be checked before creating anything.

    :returns: the consistency label of the backup to be made.
    """
    bs = conn.block_storage
    # the status check always runs; the caller may know the label better
    consistency = volumes.backup_consistency(volume)
    consistency = opts.consistency or consistency
    tags.check_not_reserved(opts.properties)
    if opts.properties and not supports(bs, MV_METADATA):
        raise errors.InvalidInput(
            f'--os-volume-api-version {MV_METADATA} or greater is required '
            'to support the --property option (backup metadata); this '
            'cloud does not offer it.'
        )
    if opts.availability_zone and not supports(bs, MV_AZ):
        raise errors.InvalidInput(
            f'--os-volume-api-version {MV_AZ} or greater is required to '
            'support the --availability-zone option; this cloud does not '
            'offer it.'
        )
    if opts.timeout <= 0:
        raise errors.InvalidInput('--timeout must be a positive number.')
    return consistency


def _request(
    conn: Any, volume: Any, opts: Options, run: tags.Run, consistency: str,
    snapshot: Any = None,
) -> tuple[dict[str, Any], str | None]:
    """The create attributes, and a notice if --incremental became full.

    :param snapshot: back up this snapshot of ``volume`` (Cinder's
        ``snapshot_id``) rather than the volume as it is now.
    """
    bs = conn.block_storage
    notice = None
    incremental = opts.incremental
    parent = parent_backup(bs, volume) if incremental else None
    if incremental and parent is None:
        incremental = False
        notice = (
            f'volume {volumes.volume_label(volume)} has no available backup '
            'yet: made a full backup instead of an incremental one (the next '
            '--incremental run builds on it)'
        )
    attrs: dict[str, Any] = {
        'volume_id': volume.id,
        'name': opts.name or run.default_name(volume.name or volume.id),
        'is_incremental': incremental,
    }
    if opts.description:
        attrs['description'] = opts.description
    if snapshot is not None:
        attrs['snapshot_id'] = snapshot.id
    elif volume.status == 'in-use':
        attrs['force'] = True
    if opts.container:
        attrs['container'] = opts.container
    if opts.availability_zone:
        attrs['availability_zone'] = opts.availability_zone
    if supports(bs, MV_METADATA):
        metadata = record_metadata(volume, consistency, run)
        if parent is not None:
            # members cannot see a backup's parent: the catalog's chain
            metadata[records.PARENT_BACKUP_ID] = parent.id
        metadata.update(opts.record)
        metadata.update(opts.properties)
        attrs['metadata'] = metadata
    return attrs, notice


def plan(
    conn: Any, volume: Any, opts: Options, run: tags.Run
) -> dict[str, Any]:
    """The steps and API calls a real run would make; changes nothing."""
    consistency = preflight(conn, volume, opts)
    attrs, notice = _request(conn, volume, opts, run, consistency)
    shown = ' '.join(
        f'{k}={str(v).lower() if isinstance(v, bool) else v}'
        for k, v in attrs.items()
        if k not in ('metadata', 'description')
    )
    steps = [f'POST /backups {shown}']
    if 'metadata' in attrs:
        steps[0] += f' metadata={tags.PREFIX}*'
    if notice:
        steps.append(f'note: {notice}')
    if opts.wait:
        steps.append(
            f'wait backup available; wait volume {volume.status} again'
        )
    return {
        'dry_run': True,
        'method': METHOD,
        'source_volume_id': volume.id,
        'source_volume_name': volume.name,
        'source_volume_status': volume.status,
        'consistency': consistency,
        'name': attrs['name'],
        'steps': steps,
    }


def _delete_backup(bs: Any, backup_id: str, interval: float | None) -> None:
    try:
        backup = bs.get_backup(backup_id)
    except sdk_exc.NotFoundException:
        return
    if backup.status == 'creating':
        backup = waits.wait_for_status(
            bs, backup, 'available', kind='backup',
            step='wait for the incomplete backup to settle',
            timeout=volumes.CLEANUP_TIMEOUT, interval=interval,
            failures=['error'],
        )
    bs.delete_backup(backup, ignore_missing=True)
    waits.wait_for_delete(
        bs, backup, kind='backup', step='delete incomplete backup',
        timeout=volumes.CLEANUP_TIMEOUT, interval=interval,
    )


def _rejection(backup_id: str) -> NoBackupService:
    return NoBackupService(
        f'Cinder has no backup service that could take the backup: it '
        f'rejected backup {backup_id} ("{SCHEDULER_REJECTION}."). Cinder '
        'keeps that record in status error and lets nobody delete it '
        'until a backup service runs; then remove it with '
        f"'openstack volume backup delete {backup_id}' (an automatic "
        "'openstack backup volume create' does it for you).",
        leftover=backup_id,
    )


def backup_volume_via_backup(
    conn: Any,
    volume: Any,
    opts: Options,
    *,
    run: tags.Run,
    reporter: Reporter,
    method_reason: str = 'requested with --via-backup',
    snapshot: Any = None,
) -> dict[str, Any]:
    """Back up ``volume`` with the Cinder Backup API.

    :param snapshot: an ``available`` snapshot of ``volume`` the caller
        took and will delete: Cinder backs up that snapshot
        (``snapshot_id``; the backup still belongs to ``volume``), and the
        wait at the end is for the snapshot to be released, not the volume.
    :raises NoBackupService: Cinder has no backup service to take it
        (synchronously on old releases, or the scheduler's rejection).
    """
    consistency = preflight(conn, volume, opts)
    bs = conn.block_storage
    started = time.monotonic()
    deadline = waits.Deadline(opts.timeout)
    label = volumes.volume_label(volume)
    attrs, notice = _request(
        conn, volume, opts, run, consistency, snapshot=snapshot
    )
    if consistency == volumes.CRASH_CONSISTENT:
        reporter.warn(CRASH_WARNING.format(volume=label))
    if notice:
        reporter.note(f'Note: {notice}.')
        method_reason = f'{method_reason}; {notice}'
    if 'metadata' not in attrs:
        reporter.warn(
            f'this cloud offers no backup metadata (microversion '
            f'{MV_METADATA}): the volume type and bootable flag are not '
            'recorded; restore with --type.'
        )

    cleanup = Cleanup(reporter, run_id=run.run_id)
    rejected = {'id': ''}
    with cleanup.guard():
        reporter.step(f'Creating backup of {label}')
        with cleanup.creating():
            try:
                backup = bs.create_backup(**attrs)
            except sdk_exc.HttpException as exc:
                if exc.status_code in (503, 404) and _service_missing(exc):
                    raise NoBackupService(
                        'Cinder has no backup service that could take the '
                        f'backup: {API_REJECTION}. Nothing was created.'
                    ) from exc
                raise errors.BackupError(
                    f'Cinder refused the backup of volume {label}: '
                    f'{exc.details or exc}'
                ) from exc
            backup_id = backup.id

            def undo() -> None:
                if rejected['id'] == backup_id:
                    return
                current = _get(bs, backup_id)
                if current is not None and not _taken(current, opts):
                    # waiting for it to settle would take until a backup
                    # service returns
                    raise errors.BackupError(
                        'no backup service has taken it; Cinder cannot '
                        'delete it before one does'
                    )
                _delete_backup(bs, backup_id, opts.interval)

            cleanup.add(
                f'delete incomplete backup {backup_id}',
                undo,
                leftover=f'backup {backup_id}',
                remove_command=['openstack', 'volume', 'backup', 'delete',
                                backup_id],
                when=PARTIAL,
            )
        if opts.wait:
            reporter.step(f'Waiting for backup {backup_id} to be available')
            try:
                backup = _wait_available(bs, backup, opts, deadline)
            except NotTaken:
                rejected['id'] = backup_id  # cannot be deleted now
                raise
            except errors.WaitError:
                current = _get(bs, backup_id)
                if current is not None and _rejected(current):
                    rejected['id'] = backup_id
                    raise _rejection(backup_id) from None
                raise
            # Cinder holds the snapshot it backs up, else the volume
            held, kind, status = (
                (snapshot, 'snapshot', 'available') if snapshot is not None
                else (volume, 'volume', volume.status)
            )
            reporter.step(f'Waiting for {kind} {held.id} to be released')
            waits.wait_for_status(
                bs, held, status, kind=kind,
                step=f'wait for the backed-up {kind} to be released',
                timeout=deadline, interval=opts.interval,
            )
        cleanup.outcome = f'backup {backup_id} is {backup.status}'

    key_id = None
    if volume.is_encrypted:
        key_id = _record_key(bs, backup, label, reporter, opts.wait)
    return {
        'method': METHOD,
        'method_reason': method_reason,
        'backup_id': backup.id,
        'name': backup.name,
        'status': backup.status,
        'is_incremental': bool(backup.is_incremental),
        'container': backup.container,
        'size': backup.size,
        'consistency': consistency,
        'source_volume_id': volume.id,
        'source_volume_name': volume.name,
        'encrypted': bool(volume.is_encrypted),
        'encryption_key_id': key_id,
        'run_id': run.run_id,
        'duration': round(time.monotonic() - started, 1),
    }


def _taken(backup: Any, opts: Options) -> bool:
    """Whether a backup service has taken ``backup`` (as far as we can
    tell: without --availability-zone, the service sets the zone)."""
    return bool(
        opts.availability_zone
        or backup.status != 'creating'
        or backup.availability_zone
    )


def _wait_available(
    bs: Any, backup: Any, opts: Options, deadline: waits.Deadline
) -> Any:
    """Wait until the backup is available; first only as long as a backup
    service needs to take it, to tell a dead service from a slow backup.

    :raises NotTaken: no backup service took the backup in time.
    """
    def wait(timeout: float | waits.Deadline) -> Any:
        return waits.wait_for_status(
            bs, backup, 'available', kind='backup', step='create backup',
            timeout=timeout, interval=opts.interval,
            failures=BACKUP_FAILURES,
        )

    first = min(opts.pickup_timeout, deadline.remaining())
    if opts.availability_zone or first >= deadline.remaining():
        return wait(deadline)
    try:
        return wait(first)
    except errors.WaitTimeout:
        current = _get(bs, backup.id)
        if current is None or _taken(current, opts):
            return wait(deadline)
    volume_id = backup.volume_id
    raise NotTaken(
        f'No Cinder backup service has taken backup {backup.id} in '
        f'{int(first)} s: Cinder sent it to a backup service that does not '
        'answer (its scheduler keeps sending backups to a cinder-backup '
        'that stopped after it last reported, until cinder-scheduler '
        f'restarts). The backup stays creating and volume {volume_id} '
        'backing-up until that backup service starts again, which marks '
        'the backup error and releases the volume; then delete the backup '
        f"with 'openstack volume backup delete {backup.id}'. A cloud admin "
        'can release them sooner: openstack volume backup set --state '
        f'error {backup.id}; openstack volume set --state <available or '
        f'in-use> {volume_id}.'
    )


def _record_key(
    bs: Any, backup: Any, label: str, reporter: Reporter, waited: bool
) -> str | None:
    """The backup's own copy of the volume key (microversion 3.64), noted
    for the user and, where the cloud keeps backup metadata, recorded
    there (``osc_backup_encryption_key_id``)."""
    key_id = getattr(backup, 'encryption_key_id', None)
    if not key_id and waited:
        current = _get(bs, backup.id)
        key_id = getattr(current, 'encryption_key_id', None)
    if not key_id:
        if supports(bs, MV_ENCRYPTION_KEY):
            reporter.note(
                f'Volume {label} is encrypted; Cinder did not (yet) report '
                f'the key of backup {backup.id}.'
            )
        else:
            reporter.note(
                f'Volume {label} is encrypted; the backup has its own copy '
                'of the key in Barbican, but this cloud does not show its '
                f'ID (needs microversion {MV_ENCRYPTION_KEY}).'
            )
        return None
    reporter.note(
        f'Volume {label} is encrypted: backup {backup.id} has its own copy '
        f'of the key, Barbican secret {key_id}. Cinder restores need it; '
        'to keep a copy outside the cloud: openstack backup secret save '
        f'{key_id} --file <path>.'
    )
    if waited and supports(bs, MV_METADATA):
        try:
            # Cinder has no backup metadata API of its own: the update
            # (PUT /backups/<id>, 3.43; openstacksdk sends up to 3.64)
            # replaces the whole metadata
            current = _get(bs, backup.id) or backup
            metadata = dict(current.metadata or {})
            metadata[records.ENCRYPTION_KEY_ID] = str(key_id)
            bs.update_backup(current, metadata=metadata)
        except Exception as exc:  # the backup is complete: only a note
            LOG.debug('Recording the key ID failed', exc_info=True)
            reporter.warn(
                f'could not record the key ID in the metadata of backup '
                f'{backup.id}: {exc}'
            )
    return str(key_id)


def _get(bs: Any, backup_id: str) -> Any | None:
    try:
        return bs.get_backup(backup_id)
    except sdk_exc.HttpException:
        return None
