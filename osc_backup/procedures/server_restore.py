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

"""Server backup -> a new server (``backup server restore``).

Where the backup comes from (a :class:`Recorded`):

* a run of ``backup server create`` in this project (:func:`from_run`,
  :func:`latest_run`): its artifacts are found by their ``osc_backup_*``
  record (image properties, Cinder backup metadata); the root disk image
  and the volume backups/images are used where they are;
* a ``--download`` directory (:func:`from_directory`): the server
  manifest and every backup set in it are validated before anything is
  made, and each image is uploaded (:mod:`image_restore`: data checked,
  keys of encrypted volumes stored again, with its key rule).

:func:`prepare` checks everything before anything is created (flavor,
key pair, availability zone and volume types exist here, each one
refused with the option that chooses another). :func:`restore_server`
then restores every volume through :mod:`volume_restore`, creates the
server (image-booted from the root disk image, or volume-booted from the
restored boot volume), waits until it is ``ACTIVE`` and attaches the
data volumes in the recorded device order. Everything it creates is on
one cleanup stack: a failure or an interrupt removes the server, the
volumes, the uploaded images and the keys stored for them (or names what
is left and how to remove it). Images uploaded only to create volumes are
removed on success too; the root disk image a server boots from stays.

A restore that is killed cannot run that stack, so everything it creates
has its run's temporary name (``osc-backup-tmp-<run>-...``, see
:mod:`osc_backup.common.tags`) until the server is ``ACTIVE`` with every
volume attached: the server is created as
``osc-backup-tmp-<run>-restore-of-<name>``. Then the volumes, the uploaded
root disk image and, last, the server get their final names: a server
with its final name is a finished restore, and ``backup cleanup`` (see
:mod:`leftovers`) finds everything else. Where Nova takes a hostname at
creation (compute API 2.90), the server gets the one its final name gives.

The new server carries ``osc_backup_restored_from=run:<run ID>`` (and the
tool's name and the restore's run ID).

Plain module: takes an openstacksdk ``Connection``; no cliff.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from openstack import exceptions as sdk_exc

from osc_backup.common import backup_set
from osc_backup.common import errors
from osc_backup.common import lookup
from osc_backup.common import records
from osc_backup.common import tags
from osc_backup.common import volumes
from osc_backup.common import waits
from osc_backup.common.cleanup import PARTIAL, TEMPORARY, Cleanup
from osc_backup.common.progress import Reporter
from osc_backup.common.text import printable
from osc_backup.procedures import image_restore
from osc_backup.procedures import secrets
from osc_backup.procedures import server_manifest
from osc_backup.procedures import volume_restore

GiB = 1024**3

IMAGE = volume_restore.IMAGE
BACKUP = volume_restore.BACKUP
ROLE_ROOT = server_manifest.ROLE_ROOT
ROLE_VOLUME = server_manifest.ROLE_VOLUME

#: the compute API version from which Nova takes a server's hostname
MV_HOSTNAME = '2.90'

#: ``--nic`` values that are not a list of networks
NIC_NONE = 'none'
NIC_AUTO = 'auto'

_RUN_ID = re.compile(rf'^{tags.RUN_ID_PATTERN}$')


@dataclass
class Disk:
    """One disk of the backed-up server, and what restores it."""

    role: str
    device: str | None
    boot_index: int | None
    #: IMAGE or BACKUP
    kind: str
    #: the artifact in this cloud (None until a set is uploaded)
    artifact_id: str | None
    size_gb: int | None = None
    volume_type: str | None = None
    bootable: bool = False
    volume_name: str | None = None
    source_volume_id: str | None = None
    #: a --download directory: the backup set to upload
    set_path: str | None = None
    set_size: int = 0
    #: the artifact's resource, once looked up (prepare) or uploaded
    resource: Any = None
    #: the volume type the restored volume gets (after --volume-type)
    target_type: str | None = None
    #: a --download directory: the set, checked (prepare)
    checked: image_restore.CheckedSet | None = None

    @property
    def label(self) -> str:
        return printable(self.device or self.role)


@dataclass
class Recorded:
    """What a backup recorded about a server and its disks."""

    #: 'run <ID>' or 'directory <path>'
    origin: str
    run_id: str
    server_id: str
    server_name: str | None
    flavor: str | None
    key_name: str | None
    availability_zone: str | None
    metadata: dict[str, str]
    #: None: not recorded
    networks: list[str] | None
    volume_backed: bool
    disks: list[Disk]
    directory: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def boot_disk(self) -> Disk:
        return next(d for d in self.disks if d.boot_index == 0)

    @property
    def data_disks(self) -> list[Disk]:
        return [
            d for d in self.disks
            if d.role == ROLE_VOLUME and d.boot_index != 0
        ]


@dataclass
class Options:
    name: str | None = None
    flavor: str | None = None
    key_name: str | None = None
    no_key_name: bool = False
    availability_zone: str | None = None
    #: None (recorded), NIC_NONE, NIC_AUTO or a list of Nova networks
    #: entries ({'uuid': ...}, {'port': ...}, with 'fixed_ip', 'tag')
    nics: str | list[dict[str, str]] | None = None
    #: --volume-type OLD=NEW
    volume_types: dict[str, str] = field(default_factory=dict)
    timeout: float = 3600.0


@dataclass
class Plan:
    recorded: Recorded
    name: str
    flavor: Any
    key_name: str | None
    availability_zone: str | None
    networks: str | list[dict[str, str]]
    metadata: dict[str, str]
    notes: list[str]
    #: given at creation where Nova takes it (else Nova derives it from
    #: the temporary name the server is created under)
    hostname: str | None = None


@dataclass
class _Finishing:
    """What gets its final name once the server is ACTIVE with every
    volume attached: until then all of it has its run's temporary name,
    so a killed restore leaves only what ``backup cleanup`` finds."""

    #: (volume ID, final name, metadata)
    volumes: list[tuple[str, str, dict[str, str]]] = field(
        default_factory=list
    )
    #: the uploaded root disk image
    image: image_restore.RestoredImage | None = None


# -- where the backup is ------------------------------------------------
def _record_of(resource: Any, kind: str) -> dict[str, str]:
    data = (
        resource.metadata if kind == BACKUP
        else getattr(resource, 'properties', None)
    ) or {}
    return {
        k: str(v) for k, v in data.items() if k.startswith(records.PREFIX)
    }


def _is_backup_artifact(record: dict[str, str]) -> bool:
    """A disk of a server backup, not an image a restore uploaded (that
    one carries the backup's record too, and the restore mark)."""
    return bool(record.get(records.SERVER_DISK)) and (
        records.RESTORED_FROM not in record
    )


def _server_artifacts(conn: Any) -> list[tuple[str, Any, dict[str, str]]]:
    """Every image and Cinder backup of this project that is a disk of a
    server backup: ``(kind, resource, record)``."""
    found = []
    project = getattr(conn, 'current_project_id', None)
    for image in conn.image.images():
        owner = getattr(image, 'owner', None)
        if isinstance(project, str) and owner and owner != project:
            continue  # public or shared by another project: not ours
        record = _record_of(image, IMAGE)
        if _is_backup_artifact(record):
            found.append((IMAGE, image, record))
    try:
        backups = list(conn.block_storage.backups(details=True))
    except sdk_exc.HttpException:
        backups = []  # no backup service: only images
    for backup in backups:
        record = _record_of(backup, BACKUP)
        if _is_backup_artifact(record):
            found.append((BACKUP, backup, record))
    return found


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, '') else None
    except ValueError:
        return None


def _json(value: str | None, kind: type) -> Any:
    if not value:
        return None
    try:
        data = json.loads(value)
    except ValueError:
        return None
    return data if isinstance(data, kind) else None


def _device_key(disk: Disk) -> tuple[int, int, str]:
    # the boot disk first, then /dev/vdb < /dev/vdc < ... < /dev/vdaa
    device = disk.device or ''
    return (0 if disk.boot_index == 0 else 1, len(device), device)


def _from_artifacts(
    run_id: str, found: list[tuple[str, Any, dict[str, str]]]
) -> Recorded:
    disks = []
    for kind, res, record in found:
        if kind == IMAGE and res.status != 'active':
            raise errors.InvalidInput(
                f"Image {res.id} of run {run_id} is '{printable(res.status)}'"
                ": the run is not complete (still going, or killed)."
            )
        if kind == BACKUP and res.status != 'available':
            raise errors.InvalidInput(
                f"Backup {res.id} of run {run_id} is "
                f"'{printable(res.status)}': only a run whose backups are "
                "all 'available' can be restored."
            )
        role = record.get(records.SERVER_DISK, '')
        if role not in server_manifest.ROLES:
            raise errors.InvalidInput(
                f'{kind.capitalize()} {res.id} of run {run_id} records an '
                f"unknown disk role '{printable(role)}'."
            )
        disks.append(Disk(
            role=role,
            device=record.get(records.DEVICE) or None,
            boot_index=_int(record.get(records.BOOT_INDEX)),
            kind=kind,
            artifact_id=res.id,
            size_gb=_int(record.get(records.VOLUME_SIZE_GB)) or (
                int(res.size) if kind == BACKUP and res.size else None
            ),
            volume_type=record.get(records.VOLUME_TYPE) or None,
            bootable=record.get(records.BOOTABLE, '').lower() == 'true',
            volume_name=record.get(records.SOURCE_VOLUME_NAME) or None,
            source_volume_id=record.get(records.SOURCE_VOLUME_ID) or None,
            resource=res,
        ))
    roots = [d for d in disks if d.role == ROLE_ROOT]
    boot = [d for d in disks if d.boot_index == 0]
    if len(roots) > 1 or len(boot) != 1:
        raise errors.InvalidInput(
            f'Run {run_id} does not hold exactly one boot disk '
            f'({len(boot)} found): it is not a complete server backup.'
        )
    # the record of the boot disk describes the server
    record = next(r for _k, res, r in found if res.id == boot[0].artifact_id)
    flavor = record.get(records.FLAVOR)
    networks = _json(record.get(records.NETWORKS), list)
    metadata = _json(record.get(records.SERVER_METADATA), dict)
    notes = []
    if metadata is None:
        metadata = {}
        if records.SERVER_METADATA not in record:
            notes.append(
                f'Run {run_id} recorded no server metadata (too long for '
                'a property, or an older osc-backup): the server gets none '
                'but the restore mark.'
            )
    return Recorded(
        origin=f'run {run_id}',
        run_id=run_id,
        server_id=record.get(records.SERVER_ID, ''),
        server_name=record.get(records.SERVER_NAME) or None,
        flavor=flavor if flavor and flavor != '?' else None,
        key_name=record.get(records.KEY_NAME) or None,
        availability_zone=record.get(records.AVAILABILITY_ZONE) or None,
        metadata={str(k): str(v) for k, v in metadata.items()},
        networks=[str(n) for n in networks] if networks is not None
        else None,
        volume_backed=not roots,
        disks=sorted(disks, key=_device_key),
        notes=notes,
    )


def from_run(conn: Any, run_id: str) -> Recorded:
    """The server backup run ``run_id`` of this project.

    :raises errors.InvalidInput: no such run, or not a complete one.
    """
    if not _RUN_ID.match(run_id):
        raise errors.InvalidInput(
            f"'{printable(run_id)}' is neither a run ID (12 hex digits, as "
            "'backup server create' prints it) nor a directory."
        )
    found = [
        a for a in _server_artifacts(conn)
        if a[2].get(records.RUN_ID) == run_id
    ]
    if not found:
        raise errors.InvalidInput(
            f'No server backup of run {run_id} found in this project '
            '(no image or Cinder backup records it).'
        )
    return _from_artifacts(run_id, found)


def latest_run(conn: Any, server: str) -> Recorded:
    """The newest server backup run of ``server`` (its ID or name as
    recorded: the server itself may be gone)."""
    runs: dict[str, list[tuple[str, Any, dict[str, str]]]] = {}
    for art in _server_artifacts(conn):
        record = art[2]
        if server in (
            record.get(records.SERVER_ID), record.get(records.SERVER_NAME)
        ) and record.get(records.RUN_ID):
            runs.setdefault(record[records.RUN_ID], []).append(art)
    if not runs:
        raise errors.InvalidInput(
            f"No server backup of server '{printable(server)}' found in "
            'this project.'
        )
    servers = {
        r[records.SERVER_ID] for arts in runs.values() for _k, _r, r in arts
        if records.SERVER_ID in r
    }
    if len(servers) > 1:
        raise errors.InvalidInput(
            f"'{printable(server)}' names backups of more than one server "
            f"({', '.join(sorted(servers))}): use the server ID."
        )

    def when(run_id: str) -> str:
        return max(
            r.get(records.CREATED_AT, '') for _k, _r, r in runs[run_id]
        )

    first: errors.InvalidInput | None = None
    for run_id in sorted(runs, key=lambda r: (when(r), r), reverse=True):
        try:
            return _from_artifacts(run_id, runs[run_id])
        except errors.InvalidInput as exc:  # incomplete: an older one
            first = first or exc
    assert first is not None
    raise first


def _set_of(directory: str, files: list[str], where: str) -> str:
    """The set manifest among an artifact's files."""
    names = [
        f for f in files if f.endswith(backup_set.MANIFEST_SUFFIX)
    ] or files[:1]
    return server_manifest.resolve(directory, names[0])


def find_manifest(path: str) -> str:
    """The server manifest of a ``--download`` directory (or the manifest
    file itself)."""
    if os.path.isdir(path):
        found = sorted(
            n for n in os.listdir(path)
            if n.endswith(server_manifest.SUFFIX) and not n.startswith('.')
        )
        if len(found) != 1:
            what = 'no' if not found else 'more than one'
            raise errors.InvalidInput(
                f"Directory '{printable(path)}' holds {what} server "
                f'manifest (*{server_manifest.SUFFIX}): pass the manifest '
                'file itself.'
            )
        return os.path.join(path, found[0])
    if path.endswith(server_manifest.SUFFIX) and os.path.isfile(path):
        return path
    raise errors.InvalidInput(
        f"'{printable(path)}' is neither a run ID, nor a directory of "
        "'backup server create --download', nor a server manifest "
        f'(*{server_manifest.SUFFIX}).'
    )


def from_directory(path: str) -> Recorded:
    """A ``--download`` directory: the server manifest and every backup
    set are validated (nothing is uploaded yet). A manifest written with
    ``--manifest`` alone names artifacts in the cloud instead (by ID).

    :raises errors.InvalidInput: one line naming the first defect.
    """
    mpath = find_manifest(path)
    directory = os.path.dirname(os.path.abspath(mpath))
    manifest = server_manifest.load(mpath)
    server = manifest['server']
    disks = []
    notes = []
    for i, entry in enumerate(manifest['disks']):
        where = f'Disk {i} ({printable(entry.get("device") or "?")})'
        artifact = entry.get('artifact')
        volume = entry.get('volume') or {}
        if artifact is None:
            notes.append(
                f'{where}: volume {printable(volume.get("id"))} was not '
                'backed up (--no-volumes): it is not restored.'
            )
            continue
        disk = Disk(
            role=entry['role'],
            device=entry.get('device'),
            boot_index=entry.get('boot_index'),
            kind=IMAGE,
            artifact_id=None,
            size_gb=volume.get('size_gb'),
            volume_type=volume.get('volume_type'),
            bootable=bool(volume.get('bootable')),
            volume_name=volume.get('name'),
            source_volume_id=volume.get('id'),
        )
        if artifact.get('files'):
            loaded = backup_set.load_set(
                _set_of(directory, artifact['files'], where)
            )
            disk.set_path = loaded.manifest_path
            disk.set_size = loaded.size
        else:
            # a --manifest without --download: the artifact is in the
            # cloud it was made in (looked up by prepare)
            disk.kind = BACKUP if artifact.get('backup_id') else IMAGE
            disk.artifact_id = artifact.get('backup_id') or (
                artifact.get('image_id')
            )
        disks.append(disk)
    if not any(d.boot_index == 0 for d in disks):
        raise errors.InvalidInput(
            f"Server manifest '{printable(mpath)}': the boot disk was not "
            'backed up; there is nothing to boot from.'
        )
    flavor = server.get('flavor') or {}
    return Recorded(
        origin=f'directory {directory}',
        run_id=manifest['run_id'],
        server_id=server['id'],
        server_name=server.get('name'),
        flavor=flavor.get('original_name') or flavor.get('id'),
        key_name=server.get('key_name'),
        availability_zone=server.get('availability_zone'),
        metadata=dict(server.get('metadata') or {}),
        networks=sorted(server.get('networks') or {}),
        volume_backed=bool(server['volume_backed']),
        disks=sorted(disks, key=_device_key),
        directory=directory,
        notes=notes,
    )


# -- planning -----------------------------------------------------------
def parse_nic(text: str) -> str | dict[str, str]:
    """One ``--nic`` value as OSC's ``server create`` takes it:
    ``none``, ``auto`` or ``net-id=...,v4-fixed-ip=...,port-id=...,
    tag=...``."""
    if text in (NIC_NONE, NIC_AUTO):
        return text
    keys = {
        'net-id': 'uuid', 'port-id': 'port', 'v4-fixed-ip': 'fixed_ip',
        'v6-fixed-ip': 'fixed_ip', 'tag': 'tag',
    }
    nic: dict[str, str] = {}
    for part in text.split(','):
        key, sep, value = part.partition('=')
        if not sep or key not in keys or not value:
            raise errors.InvalidInput(
                f"--nic '{printable(text)}': expected none, auto or "
                'net-id=<network>,v4-fixed-ip=<ip>,v6-fixed-ip=<ip>,'
                'port-id=<port>,tag=<tag>.'
            )
        if key.endswith('-fixed-ip'):
            try:
                address = ipaddress.ip_address(value)
            except ValueError:
                address = None
            if address is None or f'v{address.version}' != key[:2]:
                raise errors.InvalidInput(
                    f"--nic '{printable(text)}': '{printable(value)}' is "
                    f'not an IPv{key[1]} address.'
                )
        nic[keys[key]] = value
    if ('uuid' in nic) == ('port' in nic):
        raise errors.InvalidInput(
            f"--nic '{printable(text)}': give exactly one of net-id and "
            'port-id.'
        )
    return nic


def nics_option(
    nics: list[str], networks: list[str]
) -> str | list[dict[str, str]] | None:
    """``--nic`` and ``--network`` as :attr:`Options.nics`."""
    parsed: list[str | dict[str, str]] = [parse_nic(n) for n in nics]
    parsed += [{'uuid': n} for n in networks]
    if not parsed:
        return None
    special = [p for p in parsed if isinstance(p, str)]
    if special:
        if len(parsed) > 1:
            raise errors.InvalidInput(
                f'--nic {special[0]} cannot be combined with other --nic '
                'or --network options.'
            )
        return special[0]
    return [p for p in parsed if isinstance(p, dict)]


def _flavor(conn: Any, rec: Recorded, opts: Options) -> Any:
    name = opts.flavor or rec.flavor
    if not name:
        raise errors.InvalidInput(
            f'The backup ({rec.origin}) records no flavor: choose one with '
            '--flavor.'
        )
    try:
        flavor = conn.compute.find_flavor(name, ignore_missing=True)
    except sdk_exc.DuplicateResource:
        raise errors.InvalidInput(
            f"More than one flavor is named '{printable(name)}': pass "
            '--flavor with its ID.'
        ) from None
    if flavor is None:
        given = 'given' if opts.flavor else 'recorded'
        raise errors.InvalidInput(
            f"The {given} flavor '{printable(name)}' does not exist in this "
            'cloud: choose one with --flavor.'
        )
    return flavor


def _key_name(conn: Any, rec: Recorded, opts: Options) -> str | None:
    if opts.no_key_name:
        return None
    name = opts.key_name or rec.key_name
    if not name:
        return None
    if conn.compute.find_keypair(name, ignore_missing=True) is None:
        given = 'given' if opts.key_name else 'recorded'
        raise errors.InvalidInput(
            f"The {given} key pair '{printable(name)}' does not exist here: "
            'choose one with --key-name, or none with --no-key-name.'
        )
    return str(name)


def _availability_zone(
    conn: Any, rec: Recorded, opts: Options
) -> str | None:
    if opts.availability_zone:
        return opts.availability_zone
    zone = rec.availability_zone
    if not zone:
        return None
    try:
        zones = {z.name for z in conn.compute.availability_zones()}
    except sdk_exc.HttpException:
        return zone  # cannot tell: Nova decides
    if zone not in zones:
        raise errors.InvalidInput(
            f"The recorded availability zone '{printable(zone)}' does not "
            'exist here: choose one with --availability-zone.'
        )
    return zone


def _volume_types(
    conn: Any, rec: Recorded, opts: Options
) -> None:
    recorded = {d.volume_type for d in rec.disks if d.role == ROLE_VOLUME}
    for given in opts.volume_types:
        if given not in recorded:
            raise errors.InvalidInput(
                f"--volume-type {printable(given)}=...: no restored volume "
                f"has type '{printable(given)}' (recorded: "
                f"{', '.join(sorted(str(t) for t in recorded)) or 'none'})."
            )
    checked: dict[str, bool] = {}
    for disk in rec.disks:
        if disk.role != ROLE_VOLUME:
            continue
        old = disk.volume_type
        new = opts.volume_types.get(old or '', old)
        disk.target_type = new
        if not new or new in checked:
            continue
        try:
            found = conn.block_storage.find_type(new, ignore_missing=True)
        except sdk_exc.DuplicateResource:
            found = True  # Cinder picks by ID then; volume_restore checks
        checked[new] = found is not None
        if found is None:
            if new != old:
                raise errors.InvalidInput(
                    f"Volume type '{printable(new)}' (--volume-type) does "
                    'not exist in this cloud.'
                )
            raise errors.InvalidInput(
                f"The recorded volume type '{printable(old)}' of disk "
                f'{disk.label} does not exist in this cloud: map it with '
                f'--volume-type {printable(old)}=<type>.'
            )


def _given_nics(
    conn: Any, nics: str | list[dict[str, str]]
) -> str | list[dict[str, str]]:
    """``--nic``/``--network``: each network and port exists here (a
    network by name or ID, as ``server create`` takes it; a port not
    bound to another server); networks and ports by ID."""
    if isinstance(nics, str):
        return nics
    checked = []
    for nic in nics:
        nic = dict(nic)
        if 'uuid' in nic:
            nic['uuid'] = str(lookup.find(
                conn.network.find_network, 'network', nic['uuid'],
                option='--network, --nic net-id=',
            ).id)
            checked.append(nic)
            continue
        port = lookup.find(
            conn.network.find_port, 'port', nic['port'],
            option='--nic port-id=',
        )
        if getattr(port, 'device_id', None):
            raise errors.InvalidInput(
                f"Port '{printable(nic['port'])}' (--nic port-id=) is in "
                f'use by {printable(port.device_id)}.'
            )
        nic['port'] = str(port.id)
        checked.append(nic)
    return checked


def _upload_properties(rec: Recorded, run: tags.Run) -> dict[str, str]:
    """What an image uploaded from a backup set gets: this run's, and
    marked a restore (not a backup of the server)."""
    return {
        records.RUN_ID: run.run_id,
        records.RESTORED_FROM: f'run:{rec.run_id}',
    }


def _check_sets(
    conn: Any, rec: Recorded, run: tags.Run, reporter: Reporter | None
) -> None:
    """Every backup set of a --download directory, data hashed and key
    found, before the first one is uploaded."""
    for disk in rec.disks:
        if disk.set_path is not None and disk.checked is None:
            disk.checked = image_restore.check_set(
                conn, disk.set_path,
                properties=_upload_properties(rec, run), reporter=reporter,
            )


def _lookup_artifacts(conn: Any, rec: Recorded) -> None:
    """In-cloud artifacts: there, and in a state to restore from."""
    for disk in rec.disks:
        if disk.set_path is not None or disk.resource is not None:
            continue
        assert disk.artifact_id is not None
        try:
            if disk.kind == IMAGE:
                disk.resource = conn.image.get_image(disk.artifact_id)
            else:
                disk.resource = conn.block_storage.get_backup(
                    disk.artifact_id
                )
        except sdk_exc.NotFoundException:
            raise errors.InvalidInput(
                f'{disk.kind.capitalize()} {disk.artifact_id} (disk '
                f'{disk.label}) does not exist any more.'
            ) from None


def restored_metadata(rec: Recorded, run: tags.Run) -> dict[str, str]:
    """The new server's metadata: the recorded metadata (no osc_backup_*
    keys of its own) and the restore mark."""
    metadata = {
        k: v for k, v in rec.metadata.items()
        if not k.startswith(records.PREFIX)
    }
    metadata[records.TOOL] = tags.TOOL
    metadata[records.RUN_ID] = run.run_id
    metadata[records.RESTORED_FROM] = f'run:{rec.run_id}'
    return metadata


def prepare(
    conn: Any, rec: Recorded, opts: Options, run: tags.Run,
    reporter: Reporter | None = None,
) -> Plan:
    """Every check, before anything is created: the flavor, key pair,
    zone, volume types, networks and ports, the artifacts in the cloud,
    and (a --download directory) every backup set's data hashed.

    :raises errors.InvalidInput: one line, naming the option to choose
        another flavor, key pair, zone, volume type or network.
    """
    if opts.timeout <= 0:
        raise errors.InvalidInput('--timeout must be a positive number.')
    notes = list(rec.notes)
    flavor = _flavor(conn, rec, opts)
    key_name = _key_name(conn, rec, opts)
    zone = _availability_zone(conn, rec, opts)
    _volume_types(conn, rec, opts)
    _lookup_artifacts(conn, rec)
    if opts.nics is not None:
        networks: str | list[dict[str, str]] = _given_nics(conn, opts.nics)
    elif rec.networks is None:
        networks = NIC_AUTO
        notes.append(
            'The backup records no networks: the server gets --nic auto '
            '(choose with --nic or --network).'
        )
    elif not rec.networks:
        networks = NIC_NONE
    else:
        networks = []
        for net in rec.networks:
            try:
                found = conn.network.find_network(net, ignore_missing=True)
            except sdk_exc.DuplicateResource:
                found = None
            if found is None:
                raise errors.InvalidInput(
                    f"The recorded network '{printable(net)}' does not exist "
                    'here (or is ambiguous): choose with --network or --nic.'
                )
            networks.append({'uuid': found.id})
        notes.append(
            'The server gets new ports on the recorded networks (new '
            'addresses).'
        )
    _check_sets(conn, rec, run, reporter)
    name = opts.name or rec.server_name or f'restore-{rec.run_id}'
    hostname = None
    if _takes_hostname(conn.compute):
        hostname = hostname_of(name)
    else:
        notes.append(
            'Nova here takes no hostname at creation (compute API '
            f'{MV_HOSTNAME}): the server, created under its temporary name, '
            'gets a hostname derived from that name.'
        )
    return Plan(
        recorded=rec,
        name=name,
        flavor=flavor,
        key_name=key_name,
        availability_zone=zone,
        networks=networks,
        metadata=restored_metadata(rec, run),
        notes=notes,
        hostname=hostname,
    )


def _takes_hostname(compute: Any) -> bool:
    from openstack import utils

    try:
        return bool(utils.supports_microversion(compute, MV_HOSTNAME))
    except Exception:  # cannot tell: do not send it
        return False


def hostname_of(name: str) -> str | None:
    """The hostname Nova derives from a server name (what the server
    would get, were it not created under its temporary name); None when
    nothing of ``name`` is left for one."""
    host = re.sub(r'[ _.]', '-', name.lower())
    host = re.sub(r'[^a-z0-9-]', '', host)[:63].strip('-')
    return host if len(host) >= 2 else None


def plan_steps(plan: Plan) -> list[str]:
    """What a real run would do (``--dry-run``)."""
    rec = plan.recorded
    steps = []
    for disk in rec.disks:
        if disk.set_path is not None:
            steps.append(
                f'upload backup set {printable(disk.set_path)} '
                f'({disk.set_size} bytes) -> image (disk {disk.label})'
            )
    for disk in rec.disks:
        if disk.role != ROLE_VOLUME:
            continue
        source = (
            f'{disk.kind} {disk.artifact_id}' if disk.artifact_id
            else 'the uploaded image'
        )
        steps.append(
            f'restore {source} -> new volume of type '
            f'{printable(disk.target_type or "default")} (disk '
            f'{disk.label}{", boot" if disk.boot_index == 0 else ""})'
        )
    boot = rec.boot_disk
    what = (
        'the restored boot volume' if rec.volume_backed
        else f'image {boot.artifact_id or "(uploaded)"}'
    )
    nets = plan.networks if isinstance(plan.networks, str) else ', '.join(
        n.get('uuid') or n.get('port', '') for n in plan.networks
    )
    steps.append(
        f'create server {printable(plan.name)} from {what}: flavor '
        f'{printable(plan.flavor.name)}, key pair '
        f'{printable(plan.key_name or "none")}, availability zone '
        f'{printable(plan.availability_zone or "default")}, networks '
        f'{printable(nets)}; wait until ACTIVE'
    )
    for disk in rec.data_disks:
        steps.append(f'attach the volume of disk {disk.label}')
    steps.append(
        'give the volumes, the uploaded root disk image and, last, the '
        'server their final names (until then: osc-backup-tmp-<run>-...)'
    )
    if any(d.set_path and d.role == ROLE_VOLUME for d in rec.disks):
        steps.append('delete the images uploaded for the volumes')
    return steps


# -- running ------------------------------------------------------------
def delete_server(
    compute: Any, server_id: str, *,
    interval: float | None = waits.DEFAULT_INTERVAL,
) -> None:
    """Delete a server a restore created and wait until it is gone (its
    restored volumes are not deleted with it: they are detached)."""
    try:
        server = compute.get_server(server_id)
    except sdk_exc.NotFoundException:
        return
    compute.delete_server(server, ignore_missing=True)
    waits.wait_for_delete(
        compute, server, kind='server', step='delete the restored server',
        timeout=volumes.CLEANUP_TIMEOUT, interval=interval,
    )


def _time_left(deadline: waits.Deadline, what: str) -> float:
    left = deadline.remaining()
    if left <= 0:
        raise errors.WaitTimeout(
            f'Timed out before {what} (raise --timeout).'
        )
    return left


def _upload(
    conn: Any, disk: Disk, plan: Plan, run: tags.Run, cleanup: Cleanup,
    reporter: Reporter, deadline: waits.Deadline, finishing: _Finishing,
) -> dict[str, Any]:
    """Upload one backup set, under its temporary name; its removal
    registered (a volume's image on success too: it is only the way to
    the volume)."""
    assert disk.set_path is not None
    when = PARTIAL if disk.role == ROLE_ROOT else TEMPORARY
    suffix = 'root' if disk.role == ROLE_ROOT else (
        (disk.device or 'disk').rsplit('/', 1)[-1]
    )
    reporter.step(f'Uploading the backup set of disk {disk.label}')
    left = _time_left(deadline, f'uploading disk {disk.label}')
    # Not held (creating()): restore_image hashes the whole set before its
    # own cleanup guard starts, and a Ctrl-C then must stop at once. Its
    # guard removes the image until the image is complete; nothing but
    # the return lies between that and the registration below.
    made = image_restore.restore_image(
        conn, disk.checked or disk.set_path, name=f'{plan.name}-{suffix}',
        properties=_upload_properties(plan.recorded, run),
        timeout=left, reporter=reporter, run=run, rename=False,
    )
    if disk.role == ROLE_ROOT:
        finishing.image = made
    with cleanup.creating():
        key_id = made.encryption_key_id
        if key_id:
            # before the image: removed after it (Glance may remove it
            # with the image, on_image_deletion)
            cleanup.add(
                f'delete the key stored for image {made.image_id}',
                lambda: secrets.delete_secret(conn, key_id),
                leftover=f'secret {key_id}',
                remove_command=['openstack', 'secret', 'delete', key_id],
                when=when,
            )
        image_id = made.image_id
        cleanup.add(
            f'delete uploaded image {image_id}',
            lambda: conn.image.delete_image(image_id, ignore_missing=True),
            leftover=f'image {image_id}',
            remove_command=['openstack', 'image', 'delete', image_id],
            when=when,
        )
    disk.artifact_id = image_id
    disk.resource = conn.image.get_image(image_id)
    return {
        'disk': disk.device or disk.role,
        'image_id': image_id,
        'size': made.size,
        'kept': disk.role == ROLE_ROOT,
        'encryption_key_id': key_id,
    }


def _restore_volume(
    conn: Any, disk: Disk, plan: Plan, run: tags.Run, cleanup: Cleanup,
    reporter: Reporter, deadline: waits.Deadline, finishing: _Finishing,
) -> dict[str, Any]:
    """Restore one volume, under its temporary name (given its final one
    with the server's)."""
    bs = conn.block_storage
    suffix = (disk.device or 'disk').rsplit('/', 1)[-1]
    left = _time_left(deadline, f'restoring disk {disk.label}')
    opts = volume_restore.Options(
        name=f'{plan.name}-{suffix}',
        volume_type=disk.target_type,
        timeout=left,
        rename=False,
    )
    source = volume_restore.Source(disk.kind, disk.resource)
    reporter.step(
        f'Restoring disk {disk.label} from {disk.kind} {disk.artifact_id}'
    )
    # Held: after volume_restore's own guard (which removes an incomplete
    # volume) it still makes API calls before it returns the volume.
    with cleanup.creating():
        result = volume_restore.restore(
            conn, source, opts, run=run, reporter=reporter
        )
        volume_id = result['volume_id']
        cleanup.add(
            f'delete restored volume {volume_id}',
            lambda: volumes.delete_volume(
                bs, volume_id, step='delete restored volume'
            ),
            leftover=f'volume {volume_id}',
            remove_command=['openstack', 'volume', 'delete', volume_id],
            when=PARTIAL,
        )
    finishing.volumes.append(
        (volume_id, result['final_name'], result['metadata'])
    )
    if disk.boot_index == 0 and not result['bootable']:
        bs.set_volume_bootable_status(volume_id, True)
    return {
        'name': result['final_name'],
        'device': disk.device,
        'boot_index': disk.boot_index,
        'volume_id': volume_id,
        'size_gb': result['size'],
        'volume_type': result['volume_type'],
        'source': f"{disk.kind} {disk.artifact_id}",
        'source_volume_id': disk.source_volume_id,
    }


def _create_server(
    conn: Any, plan: Plan, boot: str, run: tags.Run, cleanup: Cleanup,
    reporter: Reporter,
) -> Any:
    rec = plan.recorded
    attrs: dict[str, Any] = {
        # its final name once it is complete (_give_final_names)
        'name': run.temporary_name(tags.RESTORE_ROLE, plan.name),
        'flavor_id': plan.flavor.id,
        'networks': plan.networks,
        'metadata': plan.metadata,
    }
    if plan.hostname:
        attrs['hostname'] = plan.hostname
    if plan.key_name:
        attrs['key_name'] = plan.key_name
    if plan.availability_zone:
        attrs['availability_zone'] = plan.availability_zone
    if rec.volume_backed:
        attrs['block_device_mapping'] = [{
            'boot_index': 0,
            'uuid': boot,
            'source_type': 'volume',
            'destination_type': 'volume',
            'delete_on_termination': False,
        }]
    else:
        attrs['image_id'] = boot
    reporter.step(f'Creating server {printable(plan.name)}')
    with cleanup.creating():
        try:
            server = conn.compute.create_server(**attrs)
        except sdk_exc.HttpException as exc:
            raise errors.BackupError(
                f'Nova refused to create the server: {exc.details or exc}'
            ) from exc
        server_id = server.id
        cleanup.add(
            f'delete restored server {server_id}',
            lambda: delete_server(conn.compute, server_id),
            leftover=f'server {server_id}',
            remove_command=['openstack', 'server', 'delete', '--wait',
                            server_id],
            when=PARTIAL,
        )
    return server


def _give_final_names(
    conn: Any, server: Any, plan: Plan, finishing: _Finishing,
    reporter: Reporter,
) -> Any:
    """The volumes, then the root disk image, then -- last -- the server:
    a restored server with its final name is a finished restore (``backup
    cleanup`` removes only what still has its temporary name)."""
    reporter.step('Giving the restored volumes and server their names')
    for volume_id, name, metadata in finishing.volumes:
        volume_restore.finish_new_volume(
            conn.block_storage, volume_id, name, metadata
        )
    if finishing.image is not None:
        image_restore.finish_image(conn, finishing.image)
    return conn.compute.update_server(server, name=plan.name)


def restore_server(
    conn: Any, plan: Plan, *, run: tags.Run, reporter: Reporter,
    timeout: float = 3600.0,
) -> dict[str, Any]:
    """Run ``plan``; see the module docstring."""
    rec = plan.recorded
    started = time.monotonic()
    deadline = waits.Deadline(timeout)
    for note in plan.notes:
        reporter.note(f'Note: {note}')
    cleanup = Cleanup(reporter, run_id=run.run_id)
    uploaded: list[dict[str, Any]] = []
    restored: dict[int, dict[str, Any]] = {}
    finishing = _Finishing()
    with cleanup.guard():
        for disk in rec.disks:
            if disk.set_path is not None:
                uploaded.append(_upload(
                    conn, disk, plan, run, cleanup, reporter, deadline,
                    finishing,
                ))
        for i, disk in enumerate(rec.disks):
            if disk.role == ROLE_VOLUME:
                restored[i] = _restore_volume(
                    conn, disk, plan, run, cleanup, reporter, deadline,
                    finishing,
                )
        boot_index = rec.disks.index(rec.boot_disk)
        boot = (
            restored[boot_index]['volume_id'] if rec.volume_backed
            else str(rec.boot_disk.artifact_id)
        )
        server = _create_server(conn, plan, boot, run, cleanup, reporter)
        reporter.step(f'Waiting for server {server.id} to become ACTIVE')
        server = waits.wait_for_status(
            conn.compute, server, 'ACTIVE', kind='server',
            step='boot the restored server', timeout=deadline,
            failures=['ERROR'],
        )
        for i, disk in enumerate(rec.disks):
            if i not in restored or disk.boot_index == 0:
                continue
            volume_id = restored[i]['volume_id']
            reporter.step(f'Attaching volume {volume_id} ({disk.label})')
            conn.compute.create_volume_attachment(server, volume_id)
            waits.wait_for_status(
                conn.block_storage, conn.block_storage.get_volume(volume_id),
                'in-use', kind='volume',
                step=f'attach the volume of disk {disk.label}',
                timeout=deadline,
            )
        server = _give_final_names(conn, server, plan, finishing, reporter)
        cleanup.outcome = f'server {server.id} is ACTIVE'
    volumes_out = [restored[i] for i in sorted(restored)]
    if uploaded:  # from a directory: what went over the wire
        total = sum(int(u.get('size') or 0) for u in uploaded)
    else:  # in the cloud: the root image and the volumes restored
        total = sum(int(v['size_gb'] or 0) * GiB for v in volumes_out)
        if not rec.volume_backed:
            total += int(getattr(rec.boot_disk.resource, 'size', 0) or 0)
    return {
        'server_id': server.id,
        'server_name': server.name,
        'server_status': server.status,
        'volume_backed': rec.volume_backed,
        'flavor': plan.flavor.name,
        'image_id': None if rec.volume_backed else rec.boot_disk.artifact_id,
        'restored_from': rec.origin,
        'source_run_id': rec.run_id,
        'source_server_id': rec.server_id,
        'volumes': volumes_out,
        'uploaded': uploaded,
        'bytes': total,
        'notes': plan.notes,
        'run_id': run.run_id,
        'duration': round(time.monotonic() - started, 1),
    }
