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

So a plan uses ``createImage`` for the ephemeral root disk
(:mod:`server_root`) and, for a server booted from a volume, for the
snapshots of all its volumes in one call; every attached volume is backed
up from a snapshot taken together with the other disks
(:mod:`server_capture`, the :data:`MODES`) by the volume procedure (image
or Cinder backup path, or the automatic choice), unless told not to.
:func:`prepare` makes the :class:`Plan` (a bad server, volume or option
is one :class:`errors.InvalidInput` line, nothing created);
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
    "only makes a Cinder snapshot of each attached volume and an "
    "image with no data in it (a block_device_mapping naming those "
    "snapshots), useless outside this cloud's Cinder. osc-backup uses that "
    "call to snapshot all the volumes together, backs up each volume from "
    "its snapshot, then deletes the snapshots and that image."
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
    "Server {server} is {status}: each disk is crash-consistent, and they "
    "are captured within seconds of each other (the output's skew), not "
    "at one moment. --pause gives one crash-consistent point{quiesce}; "
    "stopping the server first ('openstack server stop {server_id}') a "
    "consistent set."
)
NOTE_QUIESCE_HINT = (
    ", --quiesce a consistent one (with the QEMU guest agent)"
)

#: How the disks of a server are captured together (:mod:`server_capture`)
#: -- the ``mode`` of the output and the manifest:
#:
#: * offline: the server is SHUTOFF: nothing writes to its disks.
#: * quiesced: a volume-booted ACTIVE server, --quiesce: Nova's one
#:   createImage call snapshots every volume while the guest's file
#:   systems are frozen (its QEMU guest agent), and fails if they cannot
#:   be (os_require_quiesce): app-consistent, one point.
#: * paused: the guest does not run while every disk is captured (--pause,
#:   or a server that was PAUSED or SUSPENDED already): crash-consistent,
#:   one point.
#: * one-call: a volume-booted running server: Nova's one createImage call
#:   snapshots the volumes one after another, the guest running (frozen
#:   only if Nova could, which is not required): crash-consistent each.
#: * concurrent: an image-booted running server: every volume snapshot is
#:   requested at once, then the root disk image: crash-consistent each.
MODE_OFFLINE = 'offline'
MODE_QUIESCED = 'quiesced'
MODE_PAUSED = 'paused'
MODE_ONE_CALL = 'one-call'
MODE_CONCURRENT = 'concurrent'
MODES = (MODE_OFFLINE, MODE_QUIESCED, MODE_PAUSED, MODE_ONE_CALL,
         MODE_CONCURRENT)

#: The image properties that make Nova freeze the guest for createImage,
#: and fail when it cannot: Nova reads them from the boot volume's image
#: metadata when it creates the server.
GUEST_AGENT = 'hw_qemu_guest_agent'
REQUIRE_QUIESCE = 'os_require_quiesce'



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
    #: pause the server while its disks are captured (MODE_PAUSED)
    pause: bool = False
    #: require Nova to freeze the guest's file systems (MODE_QUIESCED)
    quiesce: bool = False


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
    #: one of MODES
    mode: str
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
    # offline (the server's state) and app-consistent (Nova's freeze) are
    # what the mode guarantees; crash-consistent is what the volume's own
    # status says
    override = (
        consistency if consistency != volumes.CRASH_CONSISTENT else None
    )
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


def truthy(value: Any) -> bool:
    """Nova's reading of a boolean image property."""
    return str(value).strip().lower() in ('1', 't', 'true', 'on', 'y', 'yes')


def _check_capture_options(
    opts: Options, label: str, status: str, volume_backed: bool,
    boot_volume: Any,
) -> None:
    """--pause and --quiesce: refused where they cannot do what they
    promise (one line, before anything is created)."""
    if opts.pause and opts.quiesce:
        raise errors.InvalidInput(
            '--pause and --quiesce cannot be combined: Nova freezes the '
            'guest only while it runs (a paused guest cannot answer).'
        )
    if opts.pause and status != 'ACTIVE':
        raise errors.InvalidInput(
            f"--pause: server {label} is '{printable(status)}'; only an "
            'ACTIVE server can be paused.'
        )
    if not opts.quiesce:
        return
    if not volume_backed:
        raise errors.InvalidInput(
            f'--quiesce: server {label} boots from an image; Nova freezes '
            'the guest for all its disks only for a server booted from a '
            'volume. Use --pause for one crash-consistent point.'
        )
    if status != 'ACTIVE':
        raise errors.InvalidInput(
            f"--quiesce: server {label} is '{printable(status)}'; only the "
            'guest of an ACTIVE server can be frozen.'
        )
    meta = dict(getattr(boot_volume, 'volume_image_metadata', None) or {})
    missing = [
        key for key in (GUEST_AGENT, REQUIRE_QUIESCE)
        if not truthy(meta.get(key))
    ]
    if missing:
        volume = volumes.volume_label(boot_volume)
        props = ' '.join(f'--image-property {k}=yes' for k in missing)
        wanted = ' and '.join(f'{k}=yes' for k in missing)
        raise errors.InvalidInput(
            f'--quiesce: the boot volume {volume} of server {label} lacks '
            f'the image property {wanted}, so Nova would not freeze the '
            "guest's file systems, or not fail when it cannot. Set it "
            f'(openstack volume set {props} '
            f'{printable(boot_volume.id)}) before the server is created '
            '(Nova reads it then), with the QEMU guest agent running in '
            'the guest.'
        )


def capture_mode(opts: Options, status: str, volume_backed: bool) -> str:
    """The :data:`MODES` entry of a run (options already checked)."""
    if status == 'SHUTOFF':
        return MODE_OFFLINE
    if opts.quiesce:
        return MODE_QUIESCED
    if opts.pause or status in ('PAUSED', 'SUSPENDED'):
        return MODE_PAUSED
    return MODE_ONE_CALL if volume_backed else MODE_CONCURRENT


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
    notes: list[str] = []
    disks: list[Disk] = []
    root_attachment = _root_volume(server, attachments)
    if volume_backed and root_attachment is None:
        raise errors.InvalidInput(
            f'Server {label} has neither an image nor a volume to '
            'boot from: there is nothing to back up.'
        )
    boot_volume = next(
        (v for a, v in zip(attachments, attached, strict=True)
         if a is root_attachment),
        None,
    )
    _check_capture_options(opts, label, status, volume_backed, boot_volume)
    mode = capture_mode(opts, status, volume_backed)
    consistency = {
        MODE_OFFLINE: volumes.OFFLINE,
        MODE_QUIESCED: volumes.APP_CONSISTENT,
    }.get(mode, volumes.CRASH_CONSISTENT)
    if volume_backed:
        assert root_attachment is not None
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
    if len(disks) > 1 and mode in (MODE_ONE_CALL, MODE_CONCURRENT):
        notes.append(NOTE_NOT_TOGETHER.format(
            server=label, server_id=shlex.quote(server.id), status=status,
            quiesce=NOTE_QUIESCE_HINT if volume_backed else '',
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
        mode=mode,
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
    volume_disks = [d for d in plan.disks if d.role == ROLE_VOLUME]
    if opts.pause:
        steps.append(
            f'POST /servers/{server.id}/action pause -> wait PAUSED '
            '(its unpause is registered: also on failure and Ctrl-C)'
        )
    if plan.volume_backed:
        name = nova_image_name(server, run)
        freeze = {
            MODE_QUIESCED: 'the guest frozen, required by '
                           f'{REQUIRE_QUIESCE}',
            MODE_ONE_CALL: 'the guest frozen only if Nova can',
        }.get(plan.mode, 'the guest not running')
        steps += [
            f'POST /servers/{server.id}/action createImage name={name}: '
            'Nova snapshots every attached volume in this one call '
            f"('{tags.NOVA_SNAPSHOT_PREFIX}{name}'; {freeze})",
            'GET /v2/images/<image>: the snapshot IDs of its '
            'block_device_mapping -> DELETE /v2/images/<image> (no data '
            'in it; Cinder keeps the snapshots) -> wait snapshots '
            'available',
        ]
    elif volume_disks:
        steps.append(
            f'POST /snapshots for each of the {len(volume_disks)} '
            'attached volume(s) at once (concurrent requests), named '
            f"'{run.temporary_name('snapshot', '<volume>')}'"
        )
    for disk in plan.disks:
        if disk.role == ROLE_ROOT:
            steps.append(
                f'POST /servers/{server.id}/action createImage name='
                f'{root_snapshot_name(server, run)} '
                f'metadata={tags.PREFIX}*'
            )
    if not plan.volume_backed and volume_disks:
        steps.append('wait snapshots available')
    if opts.pause:
        if not plan.volume_backed:
            steps.append(
                'wait until Nova has captured the root disk (task state '
                'past image_pending_upload)'
            )
        steps.append(
            f'POST /servers/{server.id}/action unpause (a 409 while Nova '
            "still holds the server's task state is retried) -> wait "
            'ACTIVE'
        )
    for disk in plan.disks:
        if disk.role == ROLE_ROOT:
            steps.append(
                'wait root disk image active -> PATCH '
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
            f'{printable(disk.device)}, from its snapshot: '
            f"'backup volume create --via-{disk.choice.method}' "
            f'({disk.choice.reason})'
        )
    if volume_disks:
        steps.append('DELETE every snapshot of the run -> wait gone')
    if plan.manifest:
        steps.append(f'write server manifest {plan.manifest}')
    return steps


def nova_image_name(server: Any, run: tags.Run) -> str:
    """The name of the createImage image of a volume-booted server: the
    run's temporary name, so that ``backup cleanup`` finds it and the
    snapshots Nova names after it."""
    return run.temporary_name('nova', server.name or server.id)


def root_snapshot_name(server: Any, run: tags.Run) -> str:
    """The root snapshot's name until it is complete: the run's temporary
    name, which ``backup cleanup`` finds after a killed run."""
    return run.temporary_name('root', server.name or server.id)


def root_image_name(server: Any, opts: Options, run: tags.Run) -> str:
    if opts.name:
        return opts.name
    return run.default_name(server.name or server.id)
