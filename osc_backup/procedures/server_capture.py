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

"""Capturing every disk of a server together (the plan's ``mode``).

The slow part of a server backup (uploads, Cinder backups) comes after
this; here only what fixes the disks' contents happens, as close together
as the tenant API allows:

* **Volume-booted server**: one ``createImage`` call. Nova snapshots every
  attached volume in it, after freezing the guest's file systems when
  Nova can (the QEMU guest agent, ``hw_qemu_guest_agent``; with
  ``os_require_quiesce`` a failed freeze fails the call), and lists the
  snapshots in the new image's ``block_device_mapping``. The image is
  named with the run's temporary name, so Nova names the snapshots
  ``snapshot for osc-backup-tmp-<run>-nova-of-<server>``, which ``backup
  cleanup`` finds. The snapshot IDs are read from that image, which is
  then deleted (it has no data, and must not stay as if it were a
  bootable backup); Nova does not delete the snapshots with it: they are
  this run's temporaries, deleted on success, failure and interrupt.
* **Image-booted server**: every volume snapshot is requested at once
  (concurrent requests), then the root disk's ``createImage``.
* ``--pause`` (an ACTIVE server): the server is paused before the first
  snapshot and unpaused once every disk has been captured (the volume
  snapshots are ``available``, the root disk has left Nova's
  ``image_pending_upload``). The unpause is registered on the cleanup
  stack before anything else is made, so a failure or Ctrl-C gives the
  server back too; Nova refuses an unpause (409) while its snapshot task
  still holds the server's task state, and that is retried.

Every snapshot's creation time is kept (``snapshot_created_at``): the
spread between the first and the last disk is the run's ``skew``.

Plain module: takes an openstacksdk ``Connection``; no cliff.
"""

from __future__ import annotations

import datetime
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from openstack import exceptions as sdk_exc

from osc_backup.common import errors
from osc_backup.common import tags
from osc_backup.common import volumes
from osc_backup.common import waits
from osc_backup.common.cleanup import ALWAYS, Cleanup, Undo
from osc_backup.common.progress import Reporter
from osc_backup.common.text import printable
from osc_backup.procedures import server_plan
from osc_backup.procedures import server_root

LOG = logging.getLogger(__name__)

#: Nova's task states of an image-booted server's snapshot before the
#: disk has been captured (libvirt copies it out, then sets
#: image_uploading and uploads)
CAPTURING = ('image_snapshot', 'image_snapshot_pending',
             'image_pending_upload')


@dataclass
class Captured:
    """What :func:`capture` took: one snapshot per attached volume, and
    the root disk image being made (image-booted servers)."""

    #: volume ID -> its snapshot (available)
    snapshots: dict[str, Any] = field(default_factory=dict)
    root_image_id: str | None = None
    #: the root image's deletion on failure (dropped once it is active)
    root_undo: Undo | None = None


def capture(
    conn: Any, plan: server_plan.Plan, opts: server_plan.Options,
    run: tags.Run, reporter: Reporter, deadline: waits.Deadline,
    cleanup: Cleanup,
) -> Captured:
    """Capture every disk of ``plan`` together (see the module docstring);
    every resource made is registered with ``cleanup``: the snapshots are
    temporaries (always deleted), the root image is deleted on failure
    until :func:`server_root.wait_root` has it active."""
    server = plan.server
    volume_disks = [
        d for d in plan.disks if d.role == server_plan.ROLE_VOLUME
    ]
    pause = _pause(conn, server, opts, reporter, deadline, cleanup) \
        if opts.pause else None
    if plan.volume_backed:
        taken = _nova_snapshots(
            conn, plan, opts, run, reporter, deadline, cleanup, pause
        )
    else:
        taken = _snapshots_then_root(
            conn, plan, opts, run, reporter, deadline, cleanup, pause,
            volume_disks,
        )
    if pause is not None:
        _unpause(conn, server.id, reporter, timeout=deadline,
                 interval=opts.interval)
        cleanup.drop(pause)
    missing = [
        volumes.volume_label(d.volume) for d in volume_disks
        if d.volume.id not in taken.snapshots
    ]
    if missing:
        raise errors.BackupError(
            f"Nova's createImage of server "
            f'{server_plan.server_label(server)} made no snapshot of '
            f"{', '.join(missing)} (detached meanwhile?)."
        )
    return taken


# -- pause -------------------------------------------------------------
def _pause(
    conn: Any, server: Any, opts: server_plan.Options, reporter: Reporter,
    deadline: waits.Deadline, cleanup: Cleanup,
) -> Undo:
    """Pause the server, its unpause registered first; wait PAUSED."""
    label = server_plan.server_label(server)
    reporter.step(f'Pausing server {label}')
    with cleanup.creating():
        server_root.nova_request(
            'pause', label, lambda: conn.compute.pause_server(server.id)
        )
        undo = cleanup.add(
            f'unpause server {server.id}',
            lambda: _unpause(conn, server.id, reporter,
                             timeout=volumes.CLEANUP_TIMEOUT,
                             interval=opts.interval),
            leftover=f'server {server.id} (paused)',
            remove_command=['openstack', 'server', 'unpause', server.id],
            when=ALWAYS,  # also with --keep-temporary
        )
    waits.wait_for_status(
        conn.compute, conn.compute.get_server(server.id), 'PAUSED',
        kind='server', step='pause the server', timeout=deadline,
        interval=opts.interval,
    )
    return undo


def _unpause(
    conn: Any, server_id: str, reporter: Reporter, *,
    timeout: float | waits.Deadline, interval: float | None,
) -> None:
    """Unpause the server and wait until it is ACTIVE.

    Nova takes an unpause only of a PAUSED server with no task running
    (409 otherwise, e.g. while its snapshot task uploads the root disk):
    it is asked whenever the server is so, until it runs again.
    """
    asked: list[bool] = []

    def done(current: Any) -> bool:
        status = (current.status or '').upper()
        if status == 'ERROR':
            raise errors.BackupError(
                f'Server {printable(server_id)} went to ERROR while it '
                'was to be unpaused.'
            )
        if current.task_state:
            return False  # pausing, unpausing, a snapshot task
        if status != 'PAUSED':
            return True  # running (or stopped by someone) again
        try:
            conn.compute.unpause_server(server_id)
            if not asked:
                reporter.step(f'Unpausing server {printable(server_id)}')
            asked.append(True)
        except sdk_exc.ConflictException as exc:
            LOG.debug('Unpause refused for now: %s', exc)
        return False

    waits.wait_until(
        lambda: conn.compute.get_server(server_id), done,
        what=f'server {printable(server_id)} to run again (unpause)',
        step='unpause the server', timeout=timeout, interval=interval,
    )


# -- volume-booted: Nova's createImage ------------------------------------
def _block_device_mapping(image: Any) -> list[dict[str, Any]]:
    """The image's ``block_device_mapping`` (Glance keeps it as JSON)."""
    props = dict(getattr(image, 'properties', None) or {})
    value = props.get('block_device_mapping')
    if value is None:
        value = getattr(image, 'block_device_mapping', None)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if not isinstance(value, list):
        return []
    return [m for m in value if isinstance(m, dict)]


def _nova_snapshots(
    conn: Any, plan: server_plan.Plan, opts: server_plan.Options,
    run: tags.Run, reporter: Reporter, deadline: waits.Deadline,
    cleanup: Cleanup, pause: Undo | None,
) -> Captured:
    server = plan.server
    bs = conn.block_storage
    label = server_plan.server_label(server)
    name = server_plan.nova_image_name(server, run)
    snapshot_name = tags.NOVA_SNAPSHOT_PREFIX + name
    reporter.step(
        f'Nova: createImage of server {label}: a snapshot of every volume '
        'in one call'
        + (', the guest frozen' if plan.mode == server_plan.MODE_QUIESCED
           else '')
    )
    with cleanup.creating():
        # Nova may have made some snapshots when the call fails: they are
        # found by their name
        by_name = cleanup.add(
            f"delete the snapshots named '{snapshot_name}'",
            lambda: delete_named_snapshots(bs, snapshot_name, opts.interval),
            leftover=f"the snapshots named '{snapshot_name}'",
            remove_command=['openstack', 'backup', 'cleanup', '--run-id',
                            run.run_id],
        )
        image_id: str = server_root.nova_request(
            'snapshot', label,
            lambda: server.create_image(conn.compute, name),
        )
        image_undo = cleanup.add(
            f"delete Nova's image {image_id}",
            lambda: conn.image.delete_image(image_id, ignore_missing=True),
            leftover=f'image {image_id}',
            remove_command=['openstack', 'image', 'delete', image_id],
        )
        image = conn.image.get_image(image_id)
        snapshot_ids = [
            str(m['snapshot_id']) for m in _block_device_mapping(image)
            if m.get('snapshot_id')
        ]
        for snapshot_id in snapshot_ids:
            volumes.remove_snapshot_always(
                bs, snapshot_id, cleanup, what="Nova's snapshot",
                interval=opts.interval,
            )
        if snapshot_ids:
            cleanup.drop(by_name)
        if pause is not None:
            # give the server back before the snapshots are deleted
            cleanup.move_up(pause)
    if plan.mode == server_plan.MODE_QUIESCED:
        _check_freeze_required(image, label)
    # no data, but it names the snapshots: never left as if bootable
    reporter.step(f"Deleting Nova's image {image_id} (no data in it)")
    conn.image.delete_image(image_id, ignore_missing=True)
    cleanup.drop(image_undo)
    if not snapshot_ids:
        raise errors.BackupError(
            f"Nova's image {image_id} of server {label} names no volume "
            'snapshot (block_device_mapping).'
        )
    reporter.step(f"Waiting for Nova's {len(snapshot_ids)} snapshot(s)")
    snaps = volumes.wait_available(
        bs, [bs.get_snapshot(i) for i in snapshot_ids],
        step="Nova's snapshot of a volume", timeout=deadline,
        interval=opts.interval,
    )
    return Captured(snapshots={s.volume_id: s for s in snaps})


def _check_freeze_required(image: Any, label: str) -> None:
    """--quiesce: Nova copies the server's image properties (as it read
    them when it created the server) into the createImage image; unless
    they say so there, Nova did not require the freeze."""
    props = dict(getattr(image, 'properties', None) or {})
    missing = [
        key for key in (server_plan.GUEST_AGENT, server_plan.REQUIRE_QUIESCE)
        # openstacksdk has both as attributes of an Image
        if not server_plan.truthy(
            props.get(key, getattr(image, key, None))
        )
    ]
    if missing:
        raise errors.BackupError(
            f"--quiesce: Nova's record of server {label} lacks "
            f"{' and '.join(f'{k}=yes' for k in missing)} (Nova read the "
            'image properties of the boot volume when it created the '
            'server, before they were set): it did not require the '
            "freeze. Nothing is kept."
        )


def delete_named_snapshots(
    block_storage: Any, name: str, interval: float | None,
) -> None:
    """Delete every snapshot called exactly ``name`` (Nova's snapshots of
    one createImage call: the name holds this run's tag)."""
    for snap in list(block_storage.snapshots(details=True, name=name)):
        if snap.name == name:
            volumes.delete_snapshot(
                block_storage, snap.id, step="delete Nova's snapshot",
                interval=interval,
            )


# -- image-booted: volume snapshots at once, then the root ---------------
def _snapshots_then_root(
    conn: Any, plan: server_plan.Plan, opts: server_plan.Options,
    run: tags.Run, reporter: Reporter, deadline: waits.Deadline,
    cleanup: Cleanup, pause: Undo | None, volume_disks: list[Any],
) -> Captured:
    server = plan.server
    bs = conn.block_storage
    taken = Captured()
    if volume_disks:
        reporter.step(
            f'Requesting a snapshot of {len(volume_disks)} volume(s) at once'
        )
        snaps = volumes.request_temporary_snapshots(
            bs, [d.volume for d in volume_disks], run=run, cleanup=cleanup,
            interval=opts.interval,
        )
        if pause is not None:
            cleanup.move_up(pause)
    else:
        snaps = []
    root = next(
        (d for d in plan.disks if d.role == server_plan.ROLE_ROOT), None
    )
    if root is not None:
        taken.root_image_id, taken.root_undo = server_root.request_root(
            conn, server, root, opts, plan, run, reporter, cleanup
        )
    if snaps:
        reporter.step(f'Waiting for {len(snaps)} snapshot(s)')
        snaps = volumes.wait_available(
            bs, snaps, step='snapshot of an attached volume',
            timeout=deadline, interval=opts.interval,
        )
        taken.snapshots = {s.volume_id: s for s in snaps}
    if pause is not None and root is not None:
        reporter.step('Waiting until Nova has captured the root disk')
        waits.wait_until(
            lambda: conn.compute.get_server(server.id),
            lambda s: (s.task_state or '') not in CAPTURING,
            what=f'Nova to capture the root disk of server '
                 f'{printable(server.id)}',
            step='capture of the root disk', timeout=deadline,
            interval=opts.interval,
        )
    return taken


# -- when ------------------------------------------------------------------
def parse_time(text: Any) -> datetime.datetime | None:
    """A Cinder or Glance timestamp (UTC when it names no zone)."""
    if not text:
        return None
    try:
        when = datetime.datetime.fromisoformat(str(text).replace('Z',
                                                                 '+00:00'))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when


def skew(times: list[Any]) -> float | None:
    """Seconds between the first and the last of ``times`` (None when
    none can be read)."""
    parsed = [t for t in map(parse_time, times) if t is not None]
    if not parsed:
        return None
    return round((max(parsed) - min(parsed)).total_seconds(), 1)
