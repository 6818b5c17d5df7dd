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

"""The server manifest (format ``osc-backup-server``, version 1).

One JSON file per ``backup server create`` run with ``--download`` or
``--manifest``: what a restore needs to build the server again (flavor,
image, key pair, networks, security groups, metadata) and, for each disk,
its device, boot index, volume and the artifact (image or Cinder backup)
that holds it. The format, how it is built from a plan, how it is written
and how it is read back and validated (:func:`load`) live here, so that a
``server restore`` reads the same definition.

The files of a ``--download`` directory are recorded by their names
relative to that directory (``artifact.files``), never as absolute paths;
:func:`load` refuses any name that could leave it (absolute, ``..``, a
leading dot, control characters) and :func:`resolve` any that a symlink
takes out of it.

Plain module: no cliff, no Nova calls (the plan brings what it records).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from osc_backup.common import backup_set
from osc_backup.common import errors

from osc_backup.common import tags

if TYPE_CHECKING:
    from osc_backup.procedures.server_plan import Plan

FORMAT = 'osc-backup-server'
VERSION = 1
#: the default manifest's file name ends with this
SUFFIX = '.server.json'

#: what a disk is to its server
ROLE_ROOT = 'root-disk'
ROLE_VOLUME = 'volume'
ROLES = (ROLE_ROOT, ROLE_VOLUME)

#: a manifest larger than this is not one of ours
MAX_SIZE = 16 * 1024 * 1024


def image_id_of(server: Any) -> str | None:
    """The image a server booted from; None when it boots from a volume."""
    image = server.image
    if isinstance(image, dict):
        return image.get('id') or None
    return getattr(image, 'id', None) or None


def flavor_of(server: Any) -> dict[str, Any]:
    """The flavor a server runs with, as the manifest records it."""
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


def flavor_name(server: Any) -> str:
    flavor = flavor_of(server)
    return str(flavor.get('original_name') or flavor.get('id') or '?')


def build(
    conn: Any, plan: Plan, run: tags.Run, *, duration: float,
    directory: str | None = None, skew: float | None = None,
) -> dict[str, Any]:
    """The server manifest of a finished run: what a restore needs.

    :param directory: the ``--download`` directory; the artifacts' files
        are recorded relative to it.
    :param skew: seconds between the first and the last disk's capture.
    """
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
            entry['artifact']['files'] = [
                os.path.relpath(f, directory or '.')
                for f in disk.result.get('files') or []
            ]
        else:
            entry['artifact'] = None
        disks.append(entry)
    addresses = server.addresses or {}
    return {
        'format': FORMAT,
        'format_version': VERSION,
        'tool': tags.TOOL,
        'tool_version': tags.tool_version(),
        'run_id': run.run_id,
        'created_at': run.started.isoformat(timespec='seconds'),
        'duration': duration,
        'source': backup_set.source_info(conn),
        'server': {
            'id': server.id,
            'name': server.name,
            'status': server.status,
            'description': getattr(server, 'description', None),
            'flavor': flavor_of(server),
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
        'mode': plan.mode,
        'skew': skew,
        'disks': disks,
        'notes': plan.notes,
    }


def write(path: str, manifest: dict[str, Any]) -> None:
    data = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    backup_set.write_atomic(path, (data + '\n').encode())


# -- reading -----------------------------------------------------------
class _Invalid(Exception):
    """One defect of a manifest, described relative to its root."""


def _kind(types: tuple[type, ...]) -> str:
    names = {
        str: 'a string', int: 'an integer', bool: 'true or false',
        float: 'a number', dict: 'an object', list: 'a list',
        type(None): 'null',
    }
    return ' or '.join(names[t] for t in types)


def _get(
    obj: Mapping[str, Any], key: str, where: str, *types: type,
    required: bool = True,
) -> Any:
    """``obj[key]``, checked to be one of ``types`` (bool is no int)."""
    if key not in obj:
        if required:
            raise _Invalid(f'{where}.{key} is missing')
        return None
    value = obj[key]
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        raise _Invalid(f'{where}.{key} must be {_kind(types)}')
    return value


def check_name(name: Any, where: str) -> str:
    """A file name relative to the manifest's directory, that stays in it.

    Plain components only: not absolute, no ``..``, no component that is
    empty or starts with a dot, no control characters or backslashes.
    """
    if not isinstance(name, str) or not name:
        raise _Invalid(f'{where} must be a non-empty string')
    if not name.isprintable() or '\\' in name:
        raise _Invalid(f'{where} holds control characters or a backslash')
    if os.path.isabs(name):
        raise _Invalid(f'{where} is an absolute path')
    for part in name.split('/'):
        if not part or part.startswith('.'):
            raise _Invalid(
                f"{where} is not a plain name inside the directory "
                "(empty component, '..' or a leading dot)"
            )
    return name


def _check_artifact(artifact: Any, where: str) -> None:
    if not isinstance(artifact, dict):
        raise _Invalid(f'{where} must be an object or null')
    _get(artifact, 'method', where, str)
    image_id = _get(artifact, 'image_id', where, str, required=False)
    backup_id = _get(artifact, 'backup_id', where, str, required=False)
    if not (image_id or backup_id):
        raise _Invalid(f'{where} names neither an image_id nor a backup_id')
    for key in ('snapshot_id', 'snapshot_created_at'):
        _get(artifact, key, where, str, type(None), required=False)
    files = _get(artifact, 'files', where, list, required=False) or []
    for i, name in enumerate(files):
        check_name(name, f'{where}.files[{i}]')


def _check_volume(volume: Any, where: str) -> None:
    if not isinstance(volume, dict):
        raise _Invalid(f'{where} must be an object')
    _get(volume, 'id', where, str)
    size = _get(volume, 'size_gb', where, int)
    if size <= 0:
        raise _Invalid(f'{where}.size_gb must be positive')
    _get(volume, 'name', where, str, type(None), required=False)
    _get(volume, 'volume_type', where, str, type(None), required=False)
    _get(volume, 'bootable', where, bool)
    _get(volume, 'encrypted', where, bool)


def _check_server(server: Any) -> bool:
    where = 'server'
    if not isinstance(server, dict):
        raise _Invalid('server must be an object')
    if not _get(server, 'id', where, str):
        raise _Invalid('server.id is empty')
    for key in ('name', 'status', 'description', 'image_id', 'key_name',
                'availability_zone'):
        _get(server, key, where, str, type(None), required=False)
    _get(server, 'flavor', where, dict)
    _get(server, 'networks', where, dict, required=False)
    groups = _get(server, 'security_groups', where, list, required=False)
    if any(not isinstance(g, str) for g in groups or []):
        raise _Invalid('server.security_groups must be a list of strings')
    metadata = _get(server, 'metadata', where, dict, required=False)
    if any(not isinstance(v, str) for v in (metadata or {}).values()):
        raise _Invalid('server.metadata values must be strings')
    _get(server, 'tags', where, list, required=False)
    volume_backed: bool = _get(server, 'volume_backed', where, bool)
    return volume_backed


def validate(manifest: Any) -> None:
    """Check a server manifest's format, version, keys and types.

    :raises errors.InvalidInput: one line naming the first defect.
    """
    try:
        _validate(manifest)
    except _Invalid as exc:
        raise errors.InvalidInput(f'not a valid server manifest: {exc}.') \
            from None


def _validate(manifest: Any) -> None:
    if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
        raise _Invalid(f"its format is not '{FORMAT}'")
    version = _get(manifest, 'format_version', 'manifest', int)
    if version > VERSION:
        raise _Invalid(
            f'format version {version} is newer than this osc-backup '
            f'understands ({VERSION}): upgrade osc-backup'
        )
    if version < 1:
        raise _Invalid(f'format version {version} does not exist')
    for key in ('tool', 'run_id', 'created_at', 'consistency'):
        _get(manifest, key, 'manifest', str)
    _get(manifest, 'tool_version', 'manifest', str, required=False)
    _get(manifest, 'duration', 'manifest', int, float, required=False)
    _get(manifest, 'mode', 'manifest', str, required=False)
    _get(manifest, 'skew', 'manifest', int, float, type(None),
         required=False)
    _get(manifest, 'source', 'manifest', dict, required=False)
    notes = _get(manifest, 'notes', 'manifest', list, required=False)
    if any(not isinstance(n, str) for n in notes or []):
        raise _Invalid('manifest.notes must be a list of strings')
    volume_backed = _check_server(manifest.get('server'))
    disks = _get(manifest, 'disks', 'manifest', list)
    if not disks:
        raise _Invalid('manifest.disks is empty')
    roots = 0
    boot = 0
    for i, disk in enumerate(disks):
        where = f'disks[{i}]'
        if not isinstance(disk, dict):
            raise _Invalid(f'{where} must be an object')
        role = _get(disk, 'role', where, str)
        if role not in ROLES:
            raise _Invalid(f"{where}.role must be one of {', '.join(ROLES)}")
        _get(disk, 'device', where, str, type(None))
        index = _get(disk, 'boot_index', where, int, type(None))
        boot += index == 0
        if role == ROLE_ROOT:
            roots += 1
        else:
            _check_volume(disk.get('volume'), f'{where}.volume')
        artifact = _get(disk, 'artifact', where, dict, type(None))
        if artifact is not None:
            _check_artifact(artifact, f'{where}.artifact')
    if volume_backed and roots:
        raise _Invalid('a volume-backed server has no root-disk entry')
    if not volume_backed and roots != 1:
        raise _Invalid('an image-booted server has exactly one root-disk')
    if boot != 1:
        raise _Invalid('exactly one disk must have boot_index 0')


def load(path: str) -> dict[str, Any]:
    """Read and validate the server manifest at ``path``.

    :raises errors.InvalidInput: one line; the file is not trusted beyond
        what :func:`validate` checked.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, 'rb') as f:
            data = f.read(MAX_SIZE + 1)
    except OSError as exc:
        raise errors.InvalidInput(
            f'Cannot read server manifest {path!r}: {exc.strerror}.'
        ) from None
    if len(data) > MAX_SIZE:
        raise errors.InvalidInput(
            f'Server manifest {path!r} is larger than {MAX_SIZE} bytes: '
            'not a server manifest of osc-backup.'
        )
    try:
        manifest = json.loads(data.decode('utf-8'))
    except (UnicodeDecodeError, ValueError) as exc:
        raise errors.InvalidInput(
            f'Server manifest {path!r} is not JSON: {exc}.'
        ) from None
    try:
        validate(manifest)
    except errors.InvalidInput as exc:
        raise errors.InvalidInput(f'Server manifest {path!r}: {exc}') \
            from None
    result: dict[str, Any] = manifest
    return result


def resolve(directory: str, name: str) -> str:
    """The path of ``name`` (from a validated manifest) in ``directory``;
    refused when a symlink takes it out of the directory."""
    try:
        check_name(name, 'file name')
    except _Invalid as exc:
        raise errors.InvalidInput(f'{name!r}: {exc}.') from None
    root = os.path.realpath(directory)
    path = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, path]) != root:
        raise errors.InvalidInput(
            f'{name!r} leads out of {directory!r} (a symlink?): refused.'
        )
    return path
