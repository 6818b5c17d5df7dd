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
    db-data-3f2a9c1b.raw.sha512          "sha512sum -c" checks the set

The manifest records Glance's own view of the image (every property, as
``GET /v2/images/{id}`` returned it), the hash, where it came from and
which osc-backup wrote it, so the set can be restored into any cloud
without the original. The checksum file is named after the one hash the
image has in Glance (``os_hash_algo``, sha512 by default; md5 only for an
image with nothing else), in the format ``<algo>sum -c`` reads; sets
written by osc-backup before manifest format 2 have a ``.sha256`` file.

This module owns the layout (file names, made safe from what the server
returns), the manifest (building and loading it), the checksum file and
the rules for every file the tool writes: created with
``O_CREAT|O_EXCL|O_NOFOLLOW`` and mode 0600 (directories 0700), fsynced,
and put in place by a rename that never replaces an existing file unless
the user asked for it. :mod:`osc_backup.procedures.image_save` and
:mod:`osc_backup.procedures.image_restore` write and read sets with it.

No cliff, no HTTP.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping
from typing import Any

from osc_backup.common import errors
from osc_backup.common import tags

MiB = 1024 * 1024

FORMAT = 'osc-backup-image-set'
#: 2: one checksum (Glance's algorithm), ``<data>.<algo>``; 1: sha256
FORMAT_VERSION = 2

MANIFEST_SUFFIX = '.manifest.json'
#: the checksum file of format 1 sets
LEGACY_CHECKSUM_SUFFIX = '.sha256'
#: the algorithm of the checksum file when Glance has no hash at all
DEFAULT_ALGO = 'sha512'

#: modes of what the tool creates: disk images and manifests are user data
FILE_MODE = 0o600
DIR_MODE = 0o700

#: Free space kept in reserve besides the data (manifest, checksum file).
SPACE_MARGIN = 1 * MiB

_O_NOFOLLOW = getattr(os, 'O_NOFOLLOW', 0)
_O_CLOEXEC = getattr(os, 'O_CLOEXEC', 0)
_ALGO = re.compile(r'[a-z0-9_]{1,32}')
_UNSAFE = re.compile(r'[^A-Za-z0-9_.-]+')


# -- names -------------------------------------------------------------------


def safe_name(text: object, default: str = 'x', limit: int = 80) -> str:
    """A file-name part made from a string the server returned.

    Only letters, digits, ``_``, ``-`` and single dots are kept (anything
    else, ``/``, control characters and newlines included, becomes
    ``-``); no leading or trailing dot or dash, so never ``.``, ``..`` or
    a hidden name; ``default`` when nothing is left.
    """
    name = _UNSAFE.sub('-', str(text))
    name = re.sub(r'\.{2,}', '.', name)
    name = name.strip('-.')[:limit].strip('-.')
    return name or default


def hash_algorithm(algo: object) -> str | None:
    """``algo`` (a server string) as a hashlib name usable in a file name;
    None when it is not one this Python has."""
    if not isinstance(algo, str) or not _ALGO.fullmatch(algo.lower()):
        return None
    try:
        hashlib.new(algo.lower())
    except ValueError:
        return None
    return algo.lower()


def manifest_path(data_path: str) -> str:
    return data_path + MANIFEST_SUFFIX


def checksum_path(data_path: str, algo: str) -> str:
    """``<data file>.<algo>``: what ``<algo>sum -c`` checks."""
    if hash_algorithm(algo) != algo:
        raise ValueError(f'not a hash algorithm: {algo!r}')
    return f'{data_path}.{algo}'


def checksum_line(hexdigest: str, name: str) -> str:
    """One line of a checksum file as ``<algo>sum -c`` reads it (GNU
    escaping: a name holding a backslash or a newline is escaped and the
    line starts with a backslash)."""
    if '\\' in name or '\n' in name:
        escaped = name.replace('\\', '\\\\').replace('\n', '\\n')
        return f'\\{hexdigest}  {escaped}\n'
    return f'{hexdigest}  {name}\n'


def parse_checksum_file(text: str) -> dict[str, str]:
    """{file name: hex digest} of a checksum file in ``<algo>sum`` format.

    :raises ValueError: on a line that is not in that format.
    """
    found: dict[str, str] = {}
    for line in text.split('\n'):
        if not line.strip():
            continue
        escaped = line.startswith('\\')
        if escaped:
            line = line[1:]
        digest, sep, name = line.partition(' ')
        if not sep or not re.fullmatch(r'[0-9a-fA-F]+', digest):
            raise ValueError(f'not a checksum line: {line[:80]!r}')
        if name.startswith(('*', ' ')):
            name = name[1:]
        if escaped:
            name = re.sub(
                r'\\(.)',
                lambda m: '\n' if m.group(1) == 'n' else m.group(1),
                name,
            )
        found[name] = digest.lower()
    return found


# -- files -------------------------------------------------------------------


def create_file(path: str, *, dir_fd: int | None = None) -> int:
    """A new file, open for reading and writing: ``O_CREAT|O_EXCL|
    O_NOFOLLOW``, mode 0600 whatever the umask. Never opens an existing
    file, never follows a symbolic link.

    :raises FileExistsError: something (a symlink too) is there already.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC
    fd = os.open(path, flags, FILE_MODE, dir_fd=dir_fd)
    try:
        # the umask cannot widen 0600, but a default ACL could: be sure
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _not_plain(path: str, st: os.stat_result) -> errors.InvalidInput:
    what = (
        'a symbolic link: osc-backup never writes through one'
        if stat.S_ISLNK(st.st_mode)
        else 'not a regular file'
    )
    return errors.InvalidInput(
        f"'{path}' is {what}. Remove it and run the command again."
    )


def is_plain_file(path: str, *, dir_fd: int | None = None) -> bool:
    """Whether a regular file is at ``path`` (False: nothing is).

    :raises errors.InvalidInput: a symlink or anything else is there.
    """
    try:
        st = os.lstat(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        raise _not_plain(path, st)
    return True


def open_existing(path: str, *, dir_fd: int | None = None) -> int | None:
    """Open a file this tool made earlier (a partial download) for reading
    and writing; None when there is none.

    :raises errors.InvalidInput: it is a symbolic link or not a regular
        file (never followed, never written through).
    """
    try:
        fd = os.open(path, os.O_RDWR | _O_NOFOLLOW | _O_CLOEXEC,
                     dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR):
            raise _not_plain(path, os.lstat(path, dir_fd=dir_fd)) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _not_plain(path, st)
    return fd


def create_fresh(path: str, *, dir_fd: int | None = None) -> int:
    """:func:`create_file` after removing a regular file of ours there (a
    stale partial download).

    :raises errors.InvalidInput: a symlink or anything else is there, or a
        file appeared in between.
    """
    if is_plain_file(path, dir_fd=dir_fd):
        os.unlink(path, dir_fd=dir_fd)
    try:
        return create_file(path, dir_fd=dir_fd)
    except FileExistsError:
        raise errors.InvalidInput(
            f"'{path}' appeared while starting: is another osc-backup "
            'writing it?'
        ) from None


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_new(path: str, data: bytes) -> None:
    """Create ``path`` (see :func:`create_file`) with ``data``, fsynced;
    removed again when writing fails."""
    fd = create_file(path)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink(path)
        raise
    os.close(fd)


def publish(src: str, dst: str, *, overwrite: bool = False) -> None:
    """Rename ``src`` to ``dst`` (same directory tree).

    Without ``overwrite`` an existing ``dst`` (a symlink too) is never
    replaced: the rename is a hard link plus an unlink, which fails when
    anything is at ``dst``. With it, ``dst`` is replaced by the rename (a
    symlink there is replaced, never followed).

    :raises FileExistsError: ``dst`` exists and ``overwrite`` is False.
    """
    if overwrite:
        os.replace(src, dst)
        return
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK,
                             errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # no hard links here (some network and FUSE file systems)
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST),
                                  dst) from None
        os.rename(src, dst)
        return
    os.unlink(src)


def _tmp_name(path: str) -> str:
    directory, base = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f'.{base}.{os.getpid()}.tmp')


def write_atomic(path: str, data: bytes, *, overwrite: bool = False) -> None:
    """Write ``path`` whole or not at all: a new hidden temporary file
    (:func:`write_new`), fsynced, renamed into place (:func:`publish`),
    the directory fsynced.

    :raises errors.InvalidInput: ``path`` exists and ``overwrite`` is
        False.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = _tmp_name(path)
    _unlink(tmp)  # a leftover of this very PID: ours
    write_new(tmp, data)
    try:
        publish(tmp, path, overwrite=overwrite)
    except FileExistsError:
        _unlink(tmp)
        raise errors.InvalidInput(
            f"'{path}' exists: osc-backup does not replace it."
        ) from None
    except BaseException:
        _unlink(tmp)
        raise
    fsync_dir(directory)


def make_dirs(path: str) -> None:
    """Create ``path`` and any missing parent, each mode 0700."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent != path:
        make_dirs(parent)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


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
    hash_algo: str,
    hash_value: str,
    verified: bool,
    started: float,
    finished: float,
) -> dict[str, Any]:
    """The manifest of a download of ``record`` (Glance's JSON).

    ``hash_algo``/``hash_value``: the data's one hash (the checksum
    file's); ``verified``: it matched what Glance recorded (False only for
    an image Glance has no hash for).
    """
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
            'hash_algo': hash_algo,
            'hash_value': hash_value,
            'checksum_file': os.path.basename(
                checksum_path(data_file, hash_algo)
            ),
            'verified_algo': hash_algo if verified else None,
            'verified_value': hash_value if verified else None,
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


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + '\n').encode()


def write_set(
    data_path: str, manifest: Mapping[str, Any], *, overwrite: bool = False
) -> tuple[str, str]:
    """Write the manifest and the checksum file next to ``data_path``.

    The checksum file (``<data>.<algo>``: the data and the manifest) is
    written last: a set with a checksum file is complete. With
    ``overwrite``, the checksum files of an earlier set of that name in
    another algorithm (a format 1 ``.sha256``) are removed: they no
    longer describe the data. :returns: (manifest path, checksum file
    path)
    """
    algo = manifest['data']['hash_algo']
    mpath = manifest_path(data_path)
    cpath = checksum_path(data_path, algo)
    blob = manifest_bytes(manifest)
    write_atomic(mpath, blob, overwrite=overwrite)
    if overwrite:
        remove_stale_checksums(data_path, keep=cpath)
    lines = checksum_line(
        manifest['data']['hash_value'], os.path.basename(data_path)
    ) + checksum_line(
        hashlib.new(algo, blob).hexdigest(), os.path.basename(mpath)
    )
    write_atomic(cpath, lines.encode(), overwrite=overwrite)
    return mpath, cpath


def checksum_candidates(data_path: str) -> list[str]:
    """Every name a checksum file of a set of ``data_path`` may have."""
    algos = sorted(
        {a for a in hashlib.algorithms_guaranteed if _ALGO.fullmatch(a)}
    )
    return [f'{data_path}.{a}' for a in algos]


def remove_stale_checksums(data_path: str, keep: str) -> None:
    """Remove checksum files of ``data_path`` other than ``keep`` (only
    regular files that are checksum files naming the data)."""
    import stat

    name = os.path.basename(data_path)
    for path in checksum_candidates(data_path):
        if path == keep:
            continue
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_size > 1 * MiB:
                continue
            with open(path, encoding='utf-8') as f:
                listed = parse_checksum_file(f.read())
        except (OSError, ValueError):
            continue
        if name in listed:
            _unlink(path)


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


def data_hash(manifest: Mapping[str, Any]) -> tuple[str, str]:
    """(algorithm, hex digest) of the data file as the set records it:
    format 2 its one hash, format 1 the sha256 of its ``.sha256`` file."""
    data = manifest['data']
    if 'hash_algo' in data:
        return str(data['hash_algo']), str(data['hash_value'])
    return 'sha256', str(data['sha256'])
