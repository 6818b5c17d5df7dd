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

"""Server -> its disks as backups, with the truth about volumes.

What Nova's ``createImage`` (``openstack server image create``) does:

* A server booted from an image (an ephemeral root disk): the hypervisor
  copies the **root disk only** into a new Glance image. Attached volumes,
  the flavor's ephemeral disk and swap are not in it.
* A server booted from a volume: Nova makes a Cinder **snapshot** of each
  attached volume and an image that holds **no data** at all, only a
  ``block_device_mapping`` naming those snapshots. Both live and die with
  this cloud's Cinder: nothing of it can be downloaded or restored
  elsewhere.

So this procedure uses ``createImage`` for the ephemeral root disk only,
and backs up every attached volume with the volume procedure (image or
Cinder backup path, or the automatic choice), unless told not to. Every
artifact carries the server's ID and name, the disk's device and boot
index and the run ID (``osc_backup_*`` properties / metadata), and a
server manifest (JSON) records what a restore needs: flavor, image, key
pair, networks, security groups, and for each disk its device, boot index
and the artifact that holds it.

Consistency: a ``SHUTOFF`` server's disks are ``offline`` (consistent).
Otherwise each disk is crash-consistent, and the disks are captured one
after another, so they are not consistent with each other.

Plain module: takes an openstacksdk ``Connection``; no cliff.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from keystoneauth1 import exceptions as ksa_exc
from openstack import exceptions as sdk_exc

from osc_backup.common import errors
from osc_backup.common import lookup
from osc_backup.common import tags
from osc_backup.common import volumes
from osc_backup.common import waits
from osc_backup.common.cleanup import Cleanup
from osc_backup.common.progress import Reporter
from osc_backup.procedures import image_sets
from osc_backup.procedures import volume_backup
from osc_backup.procedures import volume_choice
from osc_backup.procedures import volume_image

GiB = 1024**3

#: the method recorded on the root disk image
METHOD = 'server-image'
ROLE_ROOT = 'root-disk'
ROLE_VOLUME = 'volume'

#: Nova takes createImage in these vm states (task_state must be None)
SNAPSHOT_STATES = ('ACTIVE', 'SHUTOFF', 'PAUSED', 'SUSPENDED')

PROP_SERVER_ID = tags.PREFIX + 'server_id'
PROP_SERVER_NAME = tags.PREFIX + 'server_name'
PROP_ROLE = tags.PREFIX + 'server_disk'
PROP_DEVICE = tags.PREFIX + 'device'
PROP_BOOT_INDEX = tags.PREFIX + 'boot_index'
PROP_FLAVOR = tags.PREFIX + 'flavor'

MANIFEST_FORMAT = 'osc-backup-server'
MANIFEST_VERSION = 1
MANIFEST_SUFFIX = '.server.json'

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
    "first ('openstack server stop {server}') for a consistent set."
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
    interval: float = waits.DEFAULT_INTERVAL
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
    """What a run of :func:`backup_server` does, decided up front."""

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


def image_id_of(server: Any) -> str | None:
    """The image a server booted from; None when it boots from a volume."""
    image = server.image
    if isinstance(image, dict):
        return image.get('id') or None
    return getattr(image, 'id', None) or None


def server_label(server: Any) -> str:
    return f'{server.id} ({server.name})' if server.name else server.id


def _device_key(device: str | None) -> tuple[int, str]:
    # /dev/vda < /dev/vdb < ... < /dev/vdaa; unknown devices last
    if not device:
        return (99, '')
    return (len(device), device)


def _flavor(server: Any) -> dict[str, Any]:
    flavor = server.flavor
    if flavor is None:
        return {}
    get = (
        flavor.get if isinstance(flavor, dict)
        else lambda key: getattr(flavor, key, None)
    )
    data = {
        key: get(key)
        for key in (
            'id', 'original_name', 'vcpus', 'ram', 'disk', 'ephemeral',
            'swap', 'extra_specs',
        )
    }
    return {k: v for k, v in data.items() if v not in (None, '')}


def _flavor_name(server: Any) -> str:
    flavor = _flavor(server)
    return str(flavor.get('original_name') or flavor.get('id') or '?')


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
    if os.path.exists(path):
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
                f'{attachment.volume_id} attached at {attachment.device}, '
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


def _volume_opts(
    opts: Options, server: Any, disk: Disk, consistency: str,
    run: tags.Run,
) -> tuple[volume_image.Options, volume_backup.Options]:
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
        PROP_SERVER_ID: server.id,
        PROP_SERVER_NAME: server.name or '',
        PROP_ROLE: disk.role,
        PROP_DEVICE: disk.device or '',
    }
    if disk.boot_index is not None:
        record[PROP_BOOT_INDEX] = str(disk.boot_index)
    return record


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
            f"Server {label} is '{server.status}': only servers that are "
            f"{', '.join(SNAPSHOT_STATES)} can be backed up."
        )
    if server.task_state:
        raise errors.InvalidInput(
            f"Server {label} is busy (task state '{server.task_state}'); "
            'try again when it has finished.'
        )
    manifest = _check_output_paths(opts)

    attachments, attached = _attached_volumes(conn, server)
    volume_backed = image_id_of(server) is None
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
            server=label, volume=root_attachment.volume_id
        ))
        if not opts.volumes:
            raise errors.InvalidInput(
                f'Server {label} boots from volume '
                f'{root_attachment.volume_id}: with --no-volumes there is '
                'nothing to back up.'
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
        f'{volumes.volume_label(d.volume)} at {d.device}'
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
    flavor = _flavor(server)
    extra = []
    if flavor.get('ephemeral'):
        extra.append(f"a {flavor['ephemeral']} GiB ephemeral disk")
    if flavor.get('swap'):
        extra.append(f"{flavor['swap']} MiB of swap")
    for what in extra:
        notes.append(NOTE_EPHEMERAL.format(
            flavor=_flavor_name(server), server=label, what=what
        ))
    if len(disks) > 1 and consistency != volumes.OFFLINE:
        notes.append(NOTE_NOT_TOGETHER.format(
            server=server.name or server.id, status=status
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
        image_opts, backup_opts = _volume_opts(
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
        from osc_backup import download

        download.check_free_space(opts.download or '.', needed)
        if manifest is None:
            manifest = os.path.join(
                opts.download or '.',
                run.default_name(server.name or server.id) + MANIFEST_SUFFIX,
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
                f'{run.temporary_name("root", server.name or server.id)} '
                f'metadata={tags.PREFIX}* -> wait image active -> PATCH '
                f'name={root_image_name(server, opts, run)}, other '
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
            f'volume {volumes.volume_label(disk.volume)} at {disk.device}: '
            f"'backup volume create --via-{disk.choice.method}' "
            f'({disk.choice.reason})'
        )
    if plan.manifest:
        steps.append(f'write server manifest {plan.manifest}')
    return steps


def root_image_name(server: Any, opts: Options, run: tags.Run) -> str:
    if opts.name:
        return opts.name
    return run.default_name(server.name or server.id)


# -- running -----------------------------------------------------------
def _snapshot_root(
    conn: Any, server: Any, disk: Disk, opts: Options, plan: Plan,
    run: tags.Run, reporter: Reporter, deadline: waits.Deadline,
) -> dict[str, Any]:
    """createImage of the ephemeral root disk; wait until active."""
    label = server_label(server)
    name = root_image_name(server, opts, run)
    # named with the run tag until it is complete (what `backup cleanup`
    # finds when the run is killed); renamed with its record below
    snapshot_name = run.temporary_name('root', server.name or server.id)
    metadata = {
        **volume_image.base_record(METHOD, plan.consistency, run),
        PROP_FLAVOR: _flavor_name(server),
        **disk_record(server, disk),
        **opts.properties,
    }
    if opts.description:
        metadata['description'] = opts.description
    if plan.consistency == volumes.CRASH_CONSISTENT:
        reporter.warn(
            f'server {label} is {server.status}: the root disk image is '
            'crash-consistent (like pulling the power cord), unless the '
            "image asks Nova to quiesce the guest (os_require_quiesce)."
        )
    cleanup = Cleanup(
        reporter, keep_temporary=opts.keep_temporary, run_id=run.run_id
    )
    with cleanup.guard():
        reporter.step(f'Nova: createImage of server {label} -> {name}')
        with cleanup.creating():
            try:
                image_id = server.create_image(
                    conn.compute, snapshot_name, metadata
                )
            except sdk_exc.HttpException as exc:
                raise errors.BackupError(
                    f'Nova refused to snapshot server {label}: '
                    f'{exc.details or exc}'
                ) from exc
            cleanup.remove_image_on_failure(conn.image, image_id)
        reporter.step(f'Waiting for image {image_id} to become active')
        image = waits.wait_for_status(
            conn.image, conn.image.get_image(image_id), 'active',
            kind='image', step='Nova snapshot of the root disk',
            timeout=deadline, interval=opts.interval,
        )
        cleanup.outcome = f'image {image_id} is active'
    # Nova copies the properties of the image the server booted from: when
    # osc-backup made that one too, its record describes something else.
    # The complete image is kept even if this fails (the error says so).
    image, not_recorded = volume_image.finish_image(
        conn, image, metadata, name=name,
        what=f'the root disk of server {label}',
    )
    if not_recorded is not None:
        raise not_recorded
    result = {
        'method': METHOD,
        'image_id': image.id,
        'name': image.name,
        'status': image.status,
        'size': image.size,
        'disk_format': image.disk_format,
        'os_hash_algo': image.hash_algo,
        'os_hash_value': image.hash_value,
        'consistency': plan.consistency,
        'files': [],
    }
    if opts.download is not None:
        result['files'] = volume_image.download_image(
            conn, image.id, opts.download, reporter
        )
    return result


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


def build_manifest(
    conn: Any, plan: Plan, run: tags.Run, *, duration: float,
) -> dict[str, Any]:
    """The server manifest: what a restore needs."""
    server = plan.server
    attachments = {a.volume_id: a for a in plan.attachments}
    disks = []
    for disk in plan.disks + plan.skipped:
        entry: dict[str, Any] = {
            'role': disk.role,
            'device': disk.device,
            'boot_index': disk.boot_index,
        }
        if disk.volume is not None:
            volume = disk.volume
            attachment = attachments.get(volume.id)
            entry['volume'] = {
                'id': volume.id,
                'name': volume.name,
                'size_gb': volume.size,
                'volume_type': volume.volume_type,
                'bootable': bool(volume.is_bootable),
                'encrypted': bool(volume.is_encrypted),
                'delete_on_termination': getattr(
                    attachment, 'delete_on_termination', None
                ),
                'tag': getattr(attachment, 'tag', None),
            }
        if disk.result:
            entry['artifact'] = {
                k: v for k, v in disk.result.items()
                if k not in ('duration', 'run_id', 'source_volume_id',
                             'source_volume_name')
            }
        else:
            entry['artifact'] = None
        disks.append(entry)
    addresses = server.addresses or {}
    return {
        'format': MANIFEST_FORMAT,
        'format_version': MANIFEST_VERSION,
        'tool': tags.TOOL,
        'tool_version': tags.tool_version(),
        'run_id': run.run_id,
        'created_at': run.started.isoformat(timespec='seconds'),
        'duration': duration,
        'source': image_sets.source_info(conn),
        'server': {
            'id': server.id,
            'name': server.name,
            'status': server.status,
            'description': getattr(server, 'description', None),
            'flavor': _flavor(server),
            'image_id': image_id_of(server),
            'volume_backed': plan.volume_backed,
            'key_name': server.key_name,
            'availability_zone': server.availability_zone,
            'networks': {
                net: [
                    {
                        'addr': a.get('addr'),
                        'version': a.get('version'),
                        'type': a.get('OS-EXT-IPS:type'),
                        'mac': a.get('OS-EXT-IPS-MAC:mac_addr'),
                    }
                    for a in addrs
                ]
                for net, addrs in addresses.items()
            },
            'security_groups': sorted({
                g.get('name') for g in (server.security_groups or [])
                if isinstance(g, dict) and g.get('name')
            }),
            'metadata': dict(server.metadata or {}),
            'tags': list(getattr(server, 'tags', None) or []),
        },
        'consistency': plan.consistency,
        'disks': disks,
        'notes': plan.notes,
    }


def write_manifest(path: str, manifest: dict[str, Any]) -> None:
    data = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    image_sets.write_atomic(path, (data + '\n').encode())


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
    label = server_label(server)
    started = time.monotonic()
    deadline = waits.Deadline(opts.timeout)
    for note in plan.notes:
        reporter.note(f'Note: {note}')
    done: list[Disk] = []
    try:
        for disk in plan.disks:
            if disk.role == ROLE_ROOT:
                disk.result = _snapshot_root(
                    conn, server, disk, opts, plan, run, reporter, deadline
                )
            else:
                assert disk.choice is not None
                image_opts, backup_opts = _volume_opts(
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
                    f'{disk.device}'
                )
                disk.result = volume_choice.backup_volume(
                    conn, disk.volume, disk.choice, image_opts, backup_opts,
                    run=run, reporter=reporter,
                )
            done.append(disk)
    except BaseException as exc:
        if done:
            made = '; '.join(
                f"{a['disk']} {a['device'] or ''} -> {a['artifact']} "
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
        raise
    duration = round(time.monotonic() - started, 1)
    files: list[str] = []
    for disk in plan.disks:
        files += disk.result.get('files') or []
    if plan.manifest:
        write_manifest(
            plan.manifest, build_manifest(conn, plan, run, duration=duration)
        )
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
