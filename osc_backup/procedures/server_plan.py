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

"""Planning a server backup: inspect the server and its disks, check
everything, choose the volume method, before anything is created.

What Nova's ``createImage`` (``openstack server image create``) does:

* A server booted from an image (an ephemeral root disk): the hypervisor
  copies the **root disk only** into a new Glance image. Attached volumes,
  the flavor's ephemeral disk and swap are not in it.
* A server booted from a volume: Nova makes a Cinder **snapshot** of each
  attached volume and an image that holds **no data** at all, only a
  ``block_device_mapping`` naming those snapshots. Both live and die with
  this cloud's Cinder: nothing of it can be downloaded or restored
  elsewhere.

So a plan uses ``createImage`` for the ephemeral root disk only
(:mod:`server_root`), and backs up every attached volume with the volume
procedure (image or Cinder backup path, or the automatic choice), unless
told not to. :func:`prepare` makes the :class:`Plan` (a bad server, volume
or option is one :class:`errors.InvalidInput` line, nothing created);
:mod:`server_backup` runs it. The ``osc_backup_*`` keys that tie an
artifact to its server are here too (:func:`disk_record`), so that a
restore can find the artifacts of a server by them.

Plain module: takes an openstacksdk ``Connection``; no cliff.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from typing import Any

from keystoneauth1 import exceptions as ksa_exc
from openstack import exceptions as sdk_exc

from osc_backup.common import backup_set
from osc_backup.common import errors
from osc_backup.common import lookup
from osc_backup.common import records
from osc_backup.common import tags
from osc_backup.common.text import printable
from osc_backup.common import volumes
from osc_backup.common import waits
from osc_backup.procedures import server_manifest
from osc_backup.procedures import volume_backup
from osc_backup.procedures import volume_choice
from osc_backup.procedures import volume_image

GiB = 1024**3

ROLE_ROOT = server_manifest.ROLE_ROOT
ROLE_VOLUME = server_manifest.ROLE_VOLUME

#: Nova takes createImage in these vm states (task_state must be None)
SNAPSHOT_STATES = ('ACTIVE', 'SHUTOFF', 'PAUSED', 'SUSPENDED')

NOTE_VOLUME_BACKED = (
    "Server {server} boots from volume {volume}. Nova's createImage "
    "would only make a Cinder snapshot of each attached volume and an "
    "image with no data in it (a block_device_mapping naming those "
    "snapshots), useless outside this cloud's Cinder. osc-backup backs up "
    "the volumes themselves instead."
)
NOTE_ROOT_ONLY = (
    "Nova's createImage copies only the root disk of server {server}; its "
    "attached volumes ({volumes}) are not in that image."
)
NOTE_VOLUMES_SKIPPED = (
    "--no-volumes: the attached volumes ({volumes}) of server {server} are "
    "NOT backed up."
)
NOTE_EPHEMERAL = (
    "Flavor {flavor} gives server {server} {what}: Nova's createImage does "
    "not copy it and osc-backup cannot reach it through the API, so that "
    "data is NOT backed up."
)
NOTE_NOT_TOGETHER = (
    "Server {server} is {status}: each disk is crash-consistent and they "
    "are captured one after another, not at one moment. Stop the server "
    "first ('openstack server stop {server_id}') for a consistent set."
)


@dataclass
class Options:
    #: volumes: 'auto', 'image' or 'backup'
    method: str = volume_choice.AUTO
    #: back up the attached volumes
    volumes: bool = True
    name: str | None = None
    description: str | None = None
    properties: dict[str, str] = field(default_factory=dict)
    incremental: bool = False
    container: str | None = None
    timeout: float = 3600.0
    interval: float | None = waits.DEFAULT_INTERVAL
    keep_temporary: bool = False
    #: download every image into this directory (backup sets)
    download: str | None = None
    #: write the server manifest here (default with download: in it)
    manifest: str | None = None


@dataclass
class Disk:
    """One disk of the server to back up."""

    role: str
    device: str | None
    boot_index: int | None
    volume: Any = None
    choice: volume_choice.Choice | None = None
    #: the volume procedure's result, or the root image's
    result: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """What a run of :func:`server_backup.backup_server` does, decided up
    front."""

    server: Any
    volume_backed: bool
    consistency: str
    disks: list[Disk]
    skipped: list[Disk]
    notes: list[str]
    manifest: str | None
    attachments: list[Any]


# -- look-ups ----------------------------------------------------------
def find_server(conn: Any, name_or_id: str) -> Any:
    """Resolve a server by name or ID, with one clear error."""
    try:
        return lookup.find(conn.compute.find_server, 'server', name_or_id)
    except (sdk_exc.EndpointNotFound, ksa_exc.EndpointNotFound):
        raise errors.InvalidInput(
            'This cloud has no compute (Nova) service in its catalog: '
            'there are no servers to back up.'
        ) from None


def server_label(server: Any) -> str:
    """The server's ID and name, safe to print (a name is anyone's text:
    control characters are escaped, so a newline cannot forge a line)."""
    if server.name:
        return f'{printable(server.id)} ({printable(server.name)})'
    return printable(server.id)


def _device_key(device: str | None) -> tuple[int, str]:
    # /dev/vda < /dev/vdb < ... < /dev/vdaa; unknown devices last
    if not device:
        return (99, '')
    return (len(device), device)


# -- planning ----------------------------------------------------------
def _backup_only(opts: Options) -> list[str]:
    given = []
    if opts.incremental:
        given.append('--incremental')
    if opts.container:
        given.append('--container')
    return given


def _check_output_paths(opts: Options) -> str | None:
    """The manifest path; fails when it cannot be written."""
    if opts.download is not None:
        volume_image.check_directory(opts.download)
    path = opts.manifest
    if path is None:
        return None
    if os.path.lexists(path):
        raise errors.InvalidInput(
            f"--manifest: '{path}' exists; osc-backup never overwrites a "
            'manifest. Choose another file name.'
        )
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise errors.InvalidInput(
            f"--manifest: directory '{parent}' does not exist or is not "
            'writable.'
        )
    return path


def _attached_volumes(conn: Any, server: Any) -> tuple[list[Any], list[Any]]:
    """(attachments sorted by device, their volumes)."""
    attachments = sorted(
        conn.compute.volume_attachments(server),
        key=lambda a: _device_key(a.device),
    )
    found = []
    for attachment in attachments:
        try:
            found.append(conn.block_storage.get_volume(attachment.volume_id))
        except sdk_exc.NotFoundException:
            raise errors.InvalidInput(
                f'Server {server_label(server)} has volume '
                f'{printable(attachment.volume_id)} attached at '
                f'{printable(attachment.device)}, '
                'but Cinder does not know it (owned by another project?).'
            ) from None
    return attachments, found


def _root_volume(server: Any, attachments: list[Any]) -> Any | None:
    """The attachment a volume-backed server boots from."""
    if not attachments:
        return None
    root_device = getattr(server, 'root_device_name', None)
    for attachment in attachments:
        if root_device and attachment.device == root_device:
            return attachment
    # Members cannot see root_device_name: the first device boots.
    return attachments[0]


def volume_opts(
    opts: Options, server: Any, disk: Disk, consistency: str,
    run: tags.Run,
) -> tuple[volume_image.Options, volume_backup.Options]:
    """The volume procedures' options for one attached volume."""
    record = disk_record(server, disk)
    # offline is what the server's state guarantees; crash-consistent is
    # what the volume's own status says
    override = consistency if consistency == volumes.OFFLINE else None
    name = None
    if opts.name:
        name = f'{opts.name}-{_device_slug(disk.device)}'
    image_opts = volume_image.Options(
        name=name,
        description=opts.description,
        properties=dict(opts.properties),
        timeout=opts.timeout,
        interval=opts.interval,
        keep_temporary=opts.keep_temporary,
        download=opts.download,
        record=record,
        consistency=override,
    )
    backup_opts = volume_backup.Options(
        name=name,
        description=opts.description,
        incremental=opts.incremental,
        container=opts.container,
        properties=dict(opts.properties),
        timeout=opts.timeout,
        interval=opts.interval,
        record=record,
        consistency=override,
    )
    return image_opts, backup_opts


def _device_slug(device: str | None) -> str:
    return (device or 'disk').rsplit('/', 1)[-1]


def disk_record(server: Any, disk: Disk) -> dict[str, str]:
    """The osc_backup_* keys that tie an artifact to its server."""
    record = {
        records.SERVER_ID: server.id,
        records.SERVER_NAME: server.name or '',
        records.SERVER_DISK: disk.role,
        records.DEVICE: disk.device or '',
    }
    if disk.boot_index is not None:
        record[records.BOOT_INDEX] = str(disk.boot_index)
    record.update(server_record(server))
    return record


#: Glance property and Cinder metadata values are at most this long
MAX_RECORD_VALUE = 255


def server_record(server: Any) -> dict[str, str]:
    """What ``backup server restore <run ID>`` needs to build the server
    again without a manifest: flavor, key pair, availability zone,
    metadata and network names. The JSON values are left out when they
    do not fit into one property value (the manifest has them)."""
    record = {records.FLAVOR: server_manifest.flavor_name(server)}
    if server.key_name:
        record[records.KEY_NAME] = server.key_name
    if server.availability_zone:
        record[records.AVAILABILITY_ZONE] = server.availability_zone
    for key, value in (
        (records.SERVER_METADATA, dict(server.metadata or {})),
        (records.NETWORKS, sorted(server.addresses or {})),
    ):
        text = json.dumps(value, sort_keys=True, separators=(',', ':'))
        if len(text) <= MAX_RECORD_VALUE:
            record[key] = text
    return {k: v for k, v in record.items() if len(v) <= MAX_RECORD_VALUE}


def prepare(
    conn: Any, server: Any, opts: Options, run: tags.Run, *,
    probe: bool = True,
) -> Plan:
    """Check everything and decide every step before creating anything.

    :raises errors.InvalidInput: one clear line; nothing was created.
    """
    label = server_label(server)
    if opts.method not in (
        volume_choice.AUTO, volume_choice.IMAGE, volume_choice.BACKUP
    ):
        raise errors.InvalidInput(f"Unknown method '{opts.method}'.")
    if opts.timeout <= 0:
        raise errors.InvalidInput('--timeout must be a positive number.')
    tags.check_not_reserved(opts.properties)
    if opts.download is not None and opts.method == volume_choice.BACKUP:
        raise errors.InvalidInput(
            '--download cannot be used with --via-backup: a Cinder backup '
            'cannot leave the cloud through the API. Use --via-image '
            '--download <directory> to get copies of the volumes out of '
            'the cloud.'
        )
    backup_only = _backup_only(opts)
    if backup_only and opts.method == volume_choice.IMAGE:
        raise errors.InvalidInput(
            f'{", ".join(backup_only)} only apply to the Cinder '
            'backup path (--via-backup).'
        )
    if backup_only and opts.download is not None:
        raise errors.InvalidInput(
            f'{", ".join(backup_only)} only apply to the Cinder '
            'backup path and --download only to the image path: they '
            'cannot be combined.'
        )
    status = (server.status or '').upper()
    if status not in SNAPSHOT_STATES:
        raise errors.InvalidInput(
            f"Server {label} is '{printable(server.status)}': only servers "
            f"that are {', '.join(SNAPSHOT_STATES)} can be backed up."
        )
    if server.task_state:
        raise errors.InvalidInput(
            f"Server {label} is busy (task state "
            f"'{printable(server.task_state)}'); try again when it has "
            'finished.'
        )
    manifest = _check_output_paths(opts)

    attachments, attached = _attached_volumes(conn, server)
    volume_backed = server_manifest.image_id_of(server) is None
    consistency = (
        volumes.OFFLINE if status == 'SHUTOFF' else volumes.CRASH_CONSISTENT
    )
    notes: list[str] = []
    disks: list[Disk] = []
    root_attachment = _root_volume(server, attachments)
    if volume_backed:
        if root_attachment is None:
            raise errors.InvalidInput(
                f'Server {label} has neither an image nor a volume to '
                'boot from: there is nothing to back up.'
            )
        notes.append(NOTE_VOLUME_BACKED.format(
            server=label, volume=printable(root_attachment.volume_id)
        ))
        if not opts.volumes:
            raise errors.InvalidInput(
                f'Server {label} boots from volume '
                f'{printable(root_attachment.volume_id)}: with --no-volumes '
                'there is nothing to back up.'
            )
    else:
        disks.append(Disk(ROLE_ROOT, getattr(
            server, 'root_device_name', None
        ), 0))
    volume_disks = [
        Disk(
            ROLE_VOLUME,
            attachment.device,
            0 if volume_backed and attachment is root_attachment else None,
            volume=volume,
        )
        for attachment, volume in zip(attachments, attached, strict=True)
    ]
    names = ', '.join(
        f'{volumes.volume_label(d.volume)} at {printable(d.device)}'
        for d in volume_disks
    )
    if volume_disks and not volume_backed:
        notes.append(NOTE_ROOT_ONLY.format(server=label, volumes=names))
    skipped: list[Disk] = []
    if opts.volumes:
        disks += volume_disks
    elif volume_disks:
        skipped = volume_disks
        notes.append(NOTE_VOLUMES_SKIPPED.format(server=label, volumes=names))
    flavor = server_manifest.flavor_of(server)
    extra = []
    if flavor.get('ephemeral'):
        extra.append(f"a {flavor['ephemeral']} GiB ephemeral disk")
    if flavor.get('swap'):
        extra.append(f"{flavor['swap']} MiB of swap")
    for what in extra:
        notes.append(NOTE_EPHEMERAL.format(
            flavor=printable(server_manifest.flavor_name(server)),
            server=label,
            what=what,
        ))
    if len(disks) > 1 and consistency != volumes.OFFLINE:
        notes.append(NOTE_NOT_TOGETHER.format(
            server=label, server_id=shlex.quote(server.id), status=status
        ))

    # Decide each volume's method and run its checks now, so that a bad
    # volume stops the run before the first snapshot exists.
    image_only = ['--download'] if opts.download is not None else []
    first: volume_choice.Choice | None = None
    for disk in disks:
        if disk.role != ROLE_VOLUME:
            continue
        if first is None:
            first = volume_choice.choose(
                conn, disk.volume, opts.method, image_only=image_only,
                backup_only=backup_only, probe=probe,
            )
        # one decision for the whole server; a fall-back updates it
        disk.choice = first
        image_opts, backup_opts = volume_opts(
            opts, server, disk, consistency, run
        )
        if first.method == volume_choice.BACKUP:
            volume_backup.preflight(conn, disk.volume, backup_opts)
        else:
            volume_image.preflight(disk.volume, image_opts)
    if opts.download is not None:
        needed = sum(
            int(d.volume.size) * GiB if d.volume is not None
            else int(flavor.get('disk') or 0) * GiB
            for d in disks
        )
        backup_set.check_free_space(opts.download or '.', needed)
        if manifest is None:
            manifest = os.path.join(
                opts.download or '.',
                run.default_name(server.name or server.id)
                + server_manifest.SUFFIX,
            )
    return Plan(
        server=server,
        volume_backed=volume_backed,
        consistency=consistency,
        disks=disks,
        skipped=skipped,
        notes=notes,
        manifest=manifest,
        attachments=attachments,
    )


def plan_steps(plan: Plan, opts: Options, run: tags.Run) -> list[str]:
    """The steps a real run would take (for --dry-run)."""
    steps = []
    server = plan.server
    for disk in plan.disks:
        if disk.role == ROLE_ROOT:
            steps.append(
                f'POST /servers/{server.id}/action createImage name='
                f'{root_snapshot_name(server, run)} '
                f'metadata={tags.PREFIX}* -> wait image active -> PATCH '
                f'name={root_image_name(server, opts, run)}, inherited '
                f'{tags.PREFIX}* keys removed'
            )
            if opts.download is not None:
                steps.append(
                    'GET /v2/images/<image>/file -> backup set in '
                    f'{opts.download}'
                )
            continue
        assert disk.choice is not None
        steps.append(
            f'volume {volumes.volume_label(disk.volume)} at '
            f'{printable(disk.device)}: '
            f"'backup volume create --via-{disk.choice.method}' "
            f'({disk.choice.reason})'
        )
    if plan.manifest:
        steps.append(f'write server manifest {plan.manifest}')
    return steps


def root_snapshot_name(server: Any, run: tags.Run) -> str:
    """The root snapshot's name until it is complete: the run's temporary
    name, which ``backup cleanup`` finds after a killed run."""
    return run.temporary_name('root', server.name or server.id)


def root_image_name(server: Any, opts: Options, run: tags.Run) -> str:
    if opts.name:
        return opts.name
    return run.default_name(server.name or server.id)
