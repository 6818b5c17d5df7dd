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

"""The backup-set format, in one place.

A backup set is files side by side::

    db-data-3f2a9c1b.raw                 the image data, verified
    db-data-3f2a9c1b.raw.manifest.json   what the image was (see below)
    db-data-3f2a9c1b.raw.sha256          "sha256sum -c" checks both

The manifest records Glance's own view of the image (every property, as
``GET /v2/images/{id}`` returned it), the hashes, where it came from and
which osc-backup wrote it, so the set can be restored into any cloud
without the original. This module owns the layout (file names), the
manifest (building and loading it), the checksum file and the atomic,
fsynced writes; :mod:`osc_backup.procedures.image_save` and
:mod:`osc_backup.procedures.image_restore` write and read sets with it.

No cliff, no HTTP.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from osc_backup.common import errors
from osc_backup.common import tags

MiB = 1024 * 1024

FORMAT = 'osc-backup-image-set'
FORMAT_VERSION = 1

MANIFEST_SUFFIX = '.manifest.json'
CHECKSUM_SUFFIX = '.sha256'

#: Free space kept in reserve besides the data (manifest, checksum file).
SPACE_MARGIN = 1 * MiB


def manifest_path(data_path: str) -> str:
    return data_path + MANIFEST_SUFFIX


def checksum_path(data_path: str) -> str:
    return data_path + CHECKSUM_SUFFIX


def source_info(conn: Any) -> dict[str, Any]:
    """Where the image came from, best effort (never fails the backup)."""
    config = getattr(conn, 'config', None)
    source: dict[str, Any] = {
        'cloud': getattr(config, 'name', None),
        'region': getattr(config, 'region_name', None),
    }
    try:
        source['project_id'] = conn.current_project_id
    except Exception:  # an unusual auth type must not fail a backup
        source['project_id'] = None
    try:
        source['auth_url'] = config.auth.get('auth_url')  # type: ignore
    except Exception:
        source['auth_url'] = None
    return source


def build_manifest(
    conn: Any,
    record: Mapping[str, Any],
    *,
    data_file: str,
    size: int,
    hash_algo: str | None,
    hash_value: str | None,
    sha256: str,
    started: float,
    finished: float,
) -> dict[str, Any]:
    """The manifest of a verified download of ``record`` (Glance's JSON)."""
    backup = {
        k: v for k, v in record.items() if k.startswith(tags.PREFIX)
    }
    manifest = {
        'format': FORMAT,
        'format_version': FORMAT_VERSION,
        'tool': tags.TOOL,
        'tool_version': tags.tool_version(),
        'saved_at': _iso(finished),
        'download_started_at': _iso(started),
        'data': {
            'file': data_file,
            'size': size,
            'sha256': sha256,
            'verified_algo': hash_algo,
            'verified_value': hash_value,
        },
        'image': {
            'id': record.get('id'),
            'name': record.get('name'),
            'disk_format': record.get('disk_format'),
            'container_format': record.get('container_format'),
            'size': record.get('size'),
            'virtual_size': record.get('virtual_size'),
            'min_disk': record.get('min_disk'),
            'min_ram': record.get('min_ram'),
            'checksum': record.get('checksum'),
            'os_hash_algo': record.get('os_hash_algo'),
            'os_hash_value': record.get('os_hash_value'),
            'visibility': record.get('visibility'),
            'protected': record.get('protected'),
            'tags': list(record.get('tags') or []),
            'created_at': record.get('created_at'),
            'updated_at': record.get('updated_at'),
            'owner': record.get('owner'),
        },
        #: the image exactly as Glance returned it: all properties
        'glance_record': dict(record),
        #: what osc-backup's volume/server verbs recorded (osc_backup_*)
        'backup': backup,
        'source': source_info(conn),
    }
    key_id = record.get('cinder_encryption_key_id')
    if key_id:
        # an encrypted volume's image: LUKS data, useless without the key
        # (saved next to the data by 'backup volume create --download')
        manifest['encryption'] = {
            'format': 'luks',
            'cinder_encryption_key_id': key_id,
            'cinder_encryption_key_deletion_policy': record.get(
                'cinder_encryption_key_deletion_policy'
            ),
            'key_file': data_file + '.key',
            'passphrase_file': data_file + '.key.luks-passphrase',
            'passphrase': 'binascii.hexlify(key), as os-brick',
        }
    return manifest


def _iso(epoch: float) -> str:
    import datetime

    return (
        datetime.datetime.fromtimestamp(epoch, datetime.UTC)
        .isoformat(timespec='seconds')
        .replace('+00:00', 'Z')
    )


def write_atomic(path: str, data: bytes) -> None:
    """Write ``path`` through a temporary name, fsync, rename, fsync dir."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(
        directory, f'.{os.path.basename(path)}.{os.getpid()}.tmp'
    )
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_set(
    data_path: str, manifest: Mapping[str, Any]
) -> tuple[str, str]:
    """Write the manifest and the checksum file next to ``data_path``.

    The checksum file is written last: a set with a checksum file is
    complete. :returns: (manifest path, checksum file path)
    """
    mpath = manifest_path(data_path)
    cpath = checksum_path(data_path)
    blob = (json.dumps(manifest, indent=2, sort_keys=True) + '\n').encode()
    write_atomic(mpath, blob)
    lines = (
        f"{manifest['data']['sha256']}  {os.path.basename(data_path)}\n"
        f'{hashlib.sha256(blob).hexdigest()}  {os.path.basename(mpath)}\n'
    )
    write_atomic(cpath, lines.encode())
    return mpath, cpath


def load_manifest(path: str) -> tuple[dict[str, Any], str, str]:
    """Read a backup set from its manifest or its data file.

    :returns: (manifest, manifest path, data file path)
    :raises errors.InvalidInput: with one clear line.
    """
    path = os.path.abspath(path)
    if path.endswith(MANIFEST_SUFFIX):
        mpath = path
    elif os.path.exists(manifest_path(path)):
        mpath = manifest_path(path)
    else:
        raise errors.InvalidInput(
            f"'{path}' is neither a manifest ({MANIFEST_SUFFIX}) nor a data "
            f"file with a manifest next to it ({manifest_path(path)})."
        )
    try:
        with open(mpath, encoding='utf-8') as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise errors.InvalidInput(f"No such manifest: '{mpath}'.") from None
    except (OSError, ValueError) as exc:
        raise errors.InvalidInput(
            f"Cannot read manifest '{mpath}': {exc}"
        ) from None
    if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
        raise errors.InvalidInput(
            f"'{mpath}' is not an osc-backup image manifest."
        )
    if int(manifest.get('format_version', 0)) > FORMAT_VERSION:
        raise errors.InvalidInput(
            f"'{mpath}' has manifest format version "
            f"{manifest.get('format_version')}, newer than this osc-backup "
            f'understands ({FORMAT_VERSION}): upgrade osc-backup.'
        )
    data = os.path.join(
        os.path.dirname(os.path.abspath(mpath)), manifest['data']['file']
    )
    return manifest, mpath, data


def check_free_space(directory: str, needed: int) -> None:
    """Refuse to start when ``needed`` bytes will not fit."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    if needed + SPACE_MARGIN > free:
        raise errors.InvalidInput(
            f"Not enough free space in '{directory}': the download needs "
            f'{_human(needed)}, {_human(free)} are available.'
        )


def _human(n: float) -> str:
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if abs(n) < 1024 or unit == 'TiB':
            return f'{n:.1f} {unit}' if unit != 'B' else f'{int(n)} B'
        n /= 1024
    return f'{n} B'  # pragma: no cover
