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

"""Volume steps shared by the volume procedures.

Lookup with clear errors, temporary snapshots and volumes that register
their own undo actions, and the deletions those actions perform.
"""

from __future__ import annotations

import logging
from concurrent import futures
from typing import Any

from openstack import exceptions as sdk_exc

from osc_backup.common import errors
from osc_backup.common import lookup
from osc_backup.common import microversion
from osc_backup.common import waits
from osc_backup.common.cleanup import Cleanup
from osc_backup.common.tags import Run
from osc_backup.common.text import printable

LOG = logging.getLogger(__name__)

#: how long one cleanup step may wait (independent of --timeout, which
#: may already be spent when cleanup runs); inside the cleanup stack each
#: undo action is capped further by --cleanup-timeout (cleanup.py)
CLEANUP_TIMEOUT = 600.0

#: volume statuses from which a volume returns by itself (we wait them out
#: before deleting a temporary volume)
BUSY_VOLUME = ('creating', 'uploading', 'downloading', 'backing-up',
               'attaching', 'detaching', 'restoring-backup')


def find_volume(block_storage: Any, name_or_id: str) -> Any:
    """Resolve a volume by name or ID, with one clear error."""
    return lookup.find(block_storage.find_volume, 'volume', name_or_id)


#: volume status -> consistency of a backup taken in that status
OFFLINE = 'offline'
CRASH_CONSISTENT = 'crash-consistent'
#: the guest's file systems were frozen (its agent) while it was captured
APP_CONSISTENT = 'app-consistent'
CONSISTENCY = {'available': OFFLINE, 'in-use': CRASH_CONSISTENT}


def backup_consistency(volume: Any) -> str:
    """The consistency label of a backup of ``volume`` as it is now.

    :raises errors.InvalidInput: the volume is in no state to be backed up.
    """
    if volume.status not in CONSISTENCY:
        raise errors.InvalidInput(
            f"Volume {volume_label(volume)} is '{volume.status}': only "
            "'available' or 'in-use' volumes can be backed up; wait until "
            "it is, or ask the cloud operator if it is stuck."
        )
    return CONSISTENCY[volume.status]


def volume_label(volume: Any) -> str:
    """``ID (name)`` for messages, control characters escaped."""
    if volume.name:
        return f"{printable(volume.id)} ({printable(volume.name)})"
    return printable(volume.id)


def _settle(
    block_storage: Any, resource: Any, kind: str, step: str,
    interval: float | None, failures: list[str],
) -> Any:
    """Wait until a resource about to be deleted is no longer busy.

    One that ends in an error state (e.g. a volume made from a snapshot
    that was deleted meanwhile) is deleted as it is.
    """
    try:
        return waits.wait_for_status(
            block_storage, resource, 'available', kind=kind, step=step,
            timeout=CLEANUP_TIMEOUT, interval=interval, failures=failures,
        )
    except errors.WaitTimeout:
        raise
    except errors.WaitError as exc:
        LOG.debug('Deleting %s %s as it is: %s', kind, resource.id, exc)
        return resource


def delete_volume(
    block_storage: Any,
    volume_id: str,
    *,
    step: str,
    interval: float | None = waits.DEFAULT_INTERVAL,
) -> None:
    """Delete a volume we created and wait until it is gone."""
    try:
        volume = block_storage.get_volume(volume_id)
    except sdk_exc.NotFoundException:
        return
    if volume.status in BUSY_VOLUME:
        volume = _settle(
            block_storage, volume, 'volume', step, interval,
            ['error', 'error_restoring', 'error_extending'],
        )
    if volume.status != 'deleting':  # Cinder refuses a second request
        block_storage.delete_volume(volume, ignore_missing=True)
    waits.wait_for_delete(
        block_storage, volume, kind='volume', step=step,
        timeout=CLEANUP_TIMEOUT, interval=interval,
    )


def delete_snapshot(
    block_storage: Any,
    snapshot_id: str,
    *,
    step: str,
    interval: float | None = waits.DEFAULT_INTERVAL,
) -> None:
    """Delete a snapshot we created and wait until it is gone.

    Its deletion may have been requested already (:func:`release_snapshot`):
    then this waits for it. A driver that refuses to delete a snapshot
    while a volume made from it exists makes Cinder put it back to
    ``available``; it is asked once more (the undo of such a volume runs
    first), and a second refusal is an error.
    """
    try:
        snap = block_storage.get_snapshot(snapshot_id)
    except sdk_exc.NotFoundException:
        return
    if snap.status == 'creating':
        snap = _settle(block_storage, snap, 'snapshot', step, interval,
                       ['error'])
    for last in (False, True):
        if snap.status != 'deleting':  # Cinder refuses a second request
            block_storage.delete_snapshot(snap, ignore_missing=True)
        try:
            waits.wait_for_delete(
                block_storage, snap, kind='snapshot', step=step,
                timeout=CLEANUP_TIMEOUT, interval=interval,
                refused=('available',),
            )
            return
        except errors.DeleteRefused:
            if last:
                raise
            LOG.debug('Snapshot %s put back: asking again', snapshot_id)


def release_snapshot(block_storage: Any, snapshot: Any) -> None:
    """Ask for the deletion of a temporary snapshot as soon as the volume
    made from it is ``available``, without waiting: the deletion then runs
    while the volume is used. Its undo action (:func:`delete_snapshot`)
    waits for it at the end, and asks again where the driver refused while
    the volume existed. A failed request is left to that undo action."""
    try:
        block_storage.delete_snapshot(snapshot, ignore_missing=True)
    except Exception as exc:
        LOG.debug('Early deletion of snapshot %s not accepted: %s',
                  snapshot.id, exc)


def _temporary_snapshot_attrs(volume: Any, run: Run) -> dict[str, Any]:
    return {
        'volume_id': volume.id,
        'name': run.temporary_name('snapshot', volume.name or volume.id),
        'description': f'Temporary snapshot of osc-backup run {run.run_id}',
        'metadata': run.temporary_metadata(volume.id),
    }


def remove_snapshot_always(
    block_storage: Any,
    snapshot_id: str,
    cleanup: Cleanup,
    *,
    what: str = 'temporary snapshot',
    interval: float | None = waits.DEFAULT_INTERVAL,
) -> Any:
    """Register the deletion of a temporary snapshot (on success, failure
    and interrupt); returns the undo."""
    return cleanup.add(
        f'delete {what} {snapshot_id}',
        lambda: delete_snapshot(
            block_storage, snapshot_id, step=f'delete {what}',
            interval=interval,
        ),
        leftover=f'snapshot {snapshot_id}',
        remove_command=['openstack', 'volume', 'snapshot', 'delete',
                        snapshot_id],
    )


def create_temporary_snapshot(
    block_storage: Any,
    volume: Any,
    *,
    run: Run,
    cleanup: Cleanup,
    timeout: float | waits.Deadline,
    interval: float | None = waits.DEFAULT_INTERVAL,
) -> Any:
    """Snapshot ``volume`` (forced only where the microversion needs it),
    register its deletion, and wait until it is ``available``."""
    with cleanup.creating():
        snap = microversion.create_snapshot(
            block_storage, _temporary_snapshot_attrs(volume, run),
            volume.status,
        )
        remove_snapshot_always(
            block_storage, snap.id, cleanup, interval=interval
        )
    return waits.wait_for_status(
        block_storage, snap, 'available', kind='snapshot',
        step='create temporary snapshot', timeout=timeout, interval=interval,
    )


def request_temporary_snapshots(
    block_storage: Any,
    sources: list[Any],
    *,
    run: Run,
    cleanup: Cleanup,
    interval: float | None = waits.DEFAULT_INTERVAL,
) -> list[Any]:
    """Request a temporary snapshot of every volume of ``sources`` at once
    (one request per volume, all in flight together) and register each
    one's deletion; not waited for (:func:`wait_available`).

    Signals are held until every request has returned and every
    snapshot made is registered. If a request fails, the snapshots the
    others made are registered all the same, then the first error is
    raised.

    :returns: the new snapshots, in the order of ``sources``.
    """
    if not sources:
        return []
    # discovered once, before the threads ask for it
    microversion.snapshot_microversion(block_storage)
    made: list[Any] = []
    failure: BaseException | None = None
    with cleanup.creating():
        with futures.ThreadPoolExecutor(max_workers=len(sources)) as pool:
            pending = [
                pool.submit(
                    microversion.create_snapshot, block_storage,
                    _temporary_snapshot_attrs(volume, run), volume.status,
                )
                for volume in sources
            ]
            for future in pending:
                try:
                    snap = future.result()
                except Exception as exc:
                    LOG.debug('Snapshot request failed', exc_info=True)
                    failure = failure or exc
                    continue
                remove_snapshot_always(
                    block_storage, snap.id, cleanup, interval=interval
                )
                made.append(snap)
    if failure is not None:
        raise failure
    return made


def wait_available(
    block_storage: Any,
    snapshots: list[Any],
    *,
    step: str,
    timeout: float | waits.Deadline,
    interval: float | None = waits.DEFAULT_INTERVAL,
) -> list[Any]:
    """Wait until every snapshot of ``snapshots`` is ``available``."""
    return [
        waits.wait_for_status(
            block_storage, snap, 'available', kind='snapshot', step=step,
            timeout=timeout, interval=interval,
        )
        for snap in snapshots
    ]


def create_temporary_volume(
    block_storage: Any,
    snapshot: Any,
    source: Any,
    *,
    run: Run,
    cleanup: Cleanup,
    timeout: float | waits.Deadline,
    interval: float | None = waits.DEFAULT_INTERVAL,
) -> Any:
    """A temporary volume from ``snapshot``; deletion registered; waits
    until ``available``."""
    with cleanup.creating():
        vol = block_storage.create_volume(
            snapshot_id=snapshot.id,
            size=source.size,
            name=run.temporary_name('volume', source.name or source.id),
            description=f'Temporary volume of osc-backup run {run.run_id}',
            metadata=run.temporary_metadata(source.id),
        )
        cleanup.add(
            f'delete temporary volume {vol.id}',
            lambda: delete_volume(
                block_storage, vol.id,
                step='delete temporary volume', interval=interval,
            ),
            leftover=f'volume {vol.id}',
            remove_command=['openstack', 'volume', 'delete', vol.id],
        )
    return waits.wait_for_status(
        block_storage, vol, 'available', kind='volume',
        step='create temporary volume from snapshot', timeout=timeout,
        interval=interval,
    )
