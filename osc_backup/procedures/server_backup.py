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
:func:`backup_server` runs that plan: the root disk of an image-booted
server through :mod:`server_root`, every attached volume through the
volume procedure, then the server manifest (:mod:`server_manifest`).
Every artifact carries the server's ID and name, the disk's device and
boot index and the run ID (``osc_backup_*`` properties / metadata).

Consistency: a ``SHUTOFF`` server's disks are ``offline`` (consistent).
Otherwise each disk is crash-consistent, and the disks are captured one
after another, so they are not consistent with each other.

Plain module: takes an openstacksdk ``Connection``; no cliff.
"""

from __future__ import annotations

import time
from typing import Any

from osc_backup.common import errors
from osc_backup.common import tags
from osc_backup.common import volumes
from osc_backup.common import waits
from osc_backup.common.progress import Reporter
from osc_backup.common.text import printable
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
    }
    return line


def _stopped(
    exc: BaseException, label: str, done: list[Disk], reporter: Reporter,
) -> None:
    """Name the disks backed up so far: complete backups, kept.

    Raises a :class:`errors.BackupError` that adds them to ``exc``'s
    message; for an interrupt, says it on stderr and returns (the caller
    re-raises).
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
    reporter.note(message)  # Ctrl-C: the interrupt goes on


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
    complete backups and stay (the error names them).
    """
    server = plan.server
    label = server_plan.server_label(server)
    started = time.monotonic()
    deadline = waits.Deadline(opts.timeout)
    for note in plan.notes:
        reporter.note(f'Note: {note}')
    done: list[Disk] = []
    try:
        for disk in plan.disks:
            if disk.role == server_plan.ROLE_ROOT:
                image = server_root.snapshot_root(
                    conn, server, disk, opts, plan, run, reporter, deadline
                )
                disk.result = server_root.describe(image, plan)
                # a complete backup from here on: kept, named on failure
                done.append(disk)
                server_root.finish_root(
                    conn, image, server, disk, opts, plan, run, reporter
                )
                continue
            assert disk.choice is not None
            image_opts, backup_opts = server_plan.volume_opts(
                opts, server, disk, plan.consistency, run
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
                f'{printable(disk.device)}'
            )
            disk.result = volume_choice.backup_volume(
                conn, disk.volume, disk.choice, image_opts, backup_opts,
                run=run, reporter=reporter,
            )
            done.append(disk)
    except BaseException as exc:
        _stopped(exc, label, done, reporter)
        raise
    duration = round(time.monotonic() - started, 1)
    files: list[str] = []
    for disk in plan.disks:
        files += disk.result.get('files') or []
    if plan.manifest:
        try:
            server_manifest.write(
                plan.manifest,
                server_manifest.build(
                    conn, plan, run, duration=duration,
                    directory=opts.download,
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
