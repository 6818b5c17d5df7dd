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

"""Server -> its disks as backups: running a plan.

:mod:`server_plan` inspects the server and decides every step (what
Nova's createImage does and does not copy is explained there);
:func:`backup_server` runs that plan: first every disk is captured
together (:mod:`server_capture`: a snapshot of each attached volume, the
root disk image of an image-booted server requested, the server paused
meanwhile with --pause), then the root disk image is completed
(:mod:`server_root`), every attached volume is backed up from its
snapshot by the volume procedure, the snapshots are deleted, and the
server manifest is written (:mod:`server_manifest`). Every artifact
carries the server's ID and name, the disk's device and boot index and
the run ID (``osc_backup_*`` properties / metadata), and names the
snapshot it was made from and when that was taken.

Consistency: a ``SHUTOFF`` server's disks are ``offline`` (consistent);
with --quiesce ``app-consistent``; otherwise each disk is
crash-consistent, and the ``mode`` says whether they are of one point in
time (``paused``) or taken within ``skew`` seconds of each other.

Plain module: takes an openstacksdk ``Connection``; no cliff.
"""

from __future__ import annotations

import time
from typing import Any

from osc_backup.common import errors
from osc_backup.common import tags
from osc_backup.common import volumes
from osc_backup.common import waits
from osc_backup.common.cleanup import Cleanup
from osc_backup.common.progress import Reporter
from osc_backup.common.text import printable
from osc_backup.procedures import server_capture
from osc_backup.procedures import server_manifest
from osc_backup.procedures import server_plan
from osc_backup.procedures import server_root
from osc_backup.procedures import volume_choice
from osc_backup.procedures.server_plan import Disk, Options, Plan


def artifact(disk: Disk) -> dict[str, Any]:
    """One line of the output and of the manifest."""
    result = disk.result
    kind = 'backup' if result.get('backup_id') else 'image'
    line = {
        'disk': disk.role,
        'device': disk.device,
        'boot_index': disk.boot_index,
        'volume_id': disk.volume.id if disk.volume is not None else None,
        'method': result.get('method'),
        'artifact': kind,
        'id': result.get('backup_id') or result.get('image_id'),
        'consistency': result.get('consistency'),
        'status': result.get('status'),
        'snapshot_id': result.get('snapshot_id'),
        'snapshot_created_at': result.get('snapshot_created_at'),
    }
    return line


def _stopped(
    exc: BaseException, label: str, done: list[Disk], reporter: Reporter,
) -> None:
    """Name the disks backed up so far: complete backups, kept.

    Raises a :class:`errors.BackupError` that adds them to ``exc``'s
    message; for an interrupt, says it on stderr and raises an
    :class:`errors.Interrupted` that names them (:func:`errors.keeping`).
    """
    if not done:
        return
    made = '; '.join(
        f"{a['disk']} {printable(a['device'] or '')} -> {a['artifact']} "
        f"{a['id']}".replace('  ', ' ')
        for a in map(artifact, done)
    )
    message = (
        f'Backup of server {label} stopped; these disks are '
        f'backed up and kept (complete): {made}.'
    )
    if isinstance(exc, Exception):
        raise errors.BackupError(f'{exc}\n{message}') from exc
    if not isinstance(exc, KeyboardInterrupt):
        return
    reporter.note(message)  # Ctrl-C: the interrupt goes on
    ids = [str(a['id']) for a in map(artifact, done) if a.get('id')]
    raise errors.keeping(exc, ids, message) from exc


def backup_server(
    conn: Any,
    plan: Plan,
    opts: Options,
    *,
    run: tags.Run,
    reporter: Reporter,
) -> dict[str, Any]:
    """Back up every disk of ``plan``; see the module docstring.

    A disk that fails ends the run; the disks already backed up are
    complete backups and stay (the error names them). The snapshots of
    the capture are deleted in any case (kept with --keep-temporary).
    """
    server = plan.server
    label = server_plan.server_label(server)
    started = time.monotonic()
    deadline = waits.Deadline(opts.timeout)
    for note in plan.notes:
        reporter.note(f'Note: {note}')
    done: list[Disk] = []
    cleanup = Cleanup(
        reporter, keep_temporary=opts.keep_temporary, run_id=run.run_id
    )
    try:
        with cleanup.guard():
            taken = server_capture.capture(
                conn, plan, opts, run, reporter, deadline, cleanup
            )
            for disk in plan.disks:
                if disk.role == server_plan.ROLE_ROOT:
                    _root(conn, disk, taken, opts, plan, run, reporter,
                          deadline, cleanup, done)
                    continue
                _volume(conn, disk, taken, opts, plan, run, reporter,
                        deadline)
                done.append(disk)
            cleanup.outcome = f'{len(done)} disk(s) backed up'
    except BaseException as exc:
        _stopped(exc, label, done, reporter)
        raise
    duration = round(time.monotonic() - started, 1)
    spread = server_capture.skew(
        [d.result.get('snapshot_created_at') for d in plan.disks]
    )
    files: list[str] = []
    for disk in plan.disks:
        files += disk.result.get('files') or []
    if plan.manifest:
        try:
            server_manifest.write(
                plan.manifest,
                server_manifest.build(
                    conn, plan, run, duration=duration,
                    directory=opts.download, skew=spread,
                ),
            )
        except BaseException as exc:
            if isinstance(exc, OSError):
                exc = errors.BackupError(
                    f'Writing the server manifest {plan.manifest!r} '
                    f'failed: {exc}'
                )
            _stopped(exc, label, plan.disks, reporter)
            raise
        files.append(plan.manifest)
    return {
        'server_id': server.id,
        'server_name': server.name,
        'server_status': server.status,
        'volume_backed': plan.volume_backed,
        'consistency': plan.consistency,
        'mode': plan.mode,
        'skew': spread,
        'artifacts': [artifact(d) for d in plan.disks],
        'skipped_volumes': [d.volume.id for d in plan.skipped],
        'method_reason': next(
            (d.choice.reason for d in plan.disks if d.choice), None
        ),
        'notes': plan.notes,
        'manifest': plan.manifest,
        'files': files,
        'run_id': run.run_id,
        'duration': duration,
    }


def _root(
    conn: Any, disk: Disk, taken: server_capture.Captured, opts: Options,
    plan: Plan, run: tags.Run, reporter: Reporter,
    deadline: waits.Deadline, cleanup: Cleanup, done: list[Disk],
) -> None:
    """Wait for the root disk image the capture requested; complete it
    (it is in ``done`` once active: a complete backup)."""
    assert taken.root_image_id is not None
    reporter.step(
        f'Waiting for image {taken.root_image_id} to become active'
    )
    image = server_root.wait_root(conn, taken.root_image_id, opts, deadline)
    # a complete backup from here on: kept, named on failure
    if taken.root_undo is not None:
        cleanup.drop(taken.root_undo)
    disk.result = server_root.describe(image, plan)
    disk.result['snapshot_id'] = None
    disk.result['snapshot_created_at'] = image.created_at
    done.append(disk)
    server_root.finish_root(
        conn, image, plan.server, disk, opts, plan, run, reporter
    )


def _volume(
    conn: Any, disk: Disk, taken: server_capture.Captured, opts: Options,
    plan: Plan, run: tags.Run, reporter: Reporter,
    deadline: waits.Deadline,
) -> None:
    """Back up an attached volume from the snapshot the capture took."""
    assert disk.choice is not None
    snapshot = taken.snapshots[disk.volume.id]
    image_opts, backup_opts = server_plan.volume_opts(
        opts, plan.server, disk, plan.consistency, run
    )
    left = deadline.remaining()
    if left <= 0:
        raise errors.WaitTimeout(
            f'Timed out before backing up volume '
            f'{disk.volume.id} (raise --timeout).'
        )
    image_opts.timeout = backup_opts.timeout = left
    reporter.step(
        f'Volume {volumes.volume_label(disk.volume)} at '
        f'{printable(disk.device)}, from snapshot {snapshot.id}'
    )
    disk.result = volume_choice.backup_volume(
        conn, disk.volume, disk.choice, image_opts, backup_opts,
        run=run, reporter=reporter, snapshot=snapshot,
    )
    disk.result['snapshot_id'] = snapshot.id
    disk.result['snapshot_created_at'] = snapshot.created_at
