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
    db-data-3f2a9c1b.raw.key...          an encrypted volume's key (0600)

The manifest records Glance's own view of the image (every property, as
``GET /v2/images/{id}`` returned it), the hash, where it came from and
which osc-backup wrote it, so the set can be restored into any cloud
without the original. The checksum file is named after the one hash the
image has in Glance (``os_hash_algo``, sha512 by default; md5 only for an
image with nothing else), in the format ``<algo>sum -c`` reads, and lists
every other file of the set; sets written before manifest format 2 have
a ``.sha256`` file.

Writing (:class:`SetWriter`): the whole set is first written in a hidden
``.<data file>.partial/`` directory (0700) next to its final place, every
file verified and fsynced, the checksum file last, the directory fsynced;
then each file is renamed into place, the checksum file last, and the
directory removed. A run that stops half-way leaves that directory: the
next run reuses what is verified in it (a partial download resumes, a set
whose renames were cut short is finished). Every file the tool writes is
created with ``O_CREAT|O_EXCL|O_NOFOLLOW``, mode 0600 (directories 0700),
and put in place by a rename that never replaces an existing file unless
the user asked for it.

Reading (:func:`load_set`): the manifest is validated (format version,
required keys and their types; every file it names a plain name inside
the set's directory) and checked against the checksum file before
anything else happens.

:mod:`osc_backup.procedures.image_save` and
:mod:`osc_backup.procedures.image_restore` write and read sets with it.
No cliff, no HTTP.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from osc_backup.common import errors
from osc_backup.common import tags

MiB = 1024 * 1024

FORMAT = 'osc-backup-image-set'
#: 2: one checksum (Glance's algorithm), ``<data>.<algo>``; 1: sha256
FORMAT_VERSION = 2

MANIFEST_SUFFIX = '.manifest.json'
#: the hidden directory a set is written in: ``.<data file>.partial``
PARTIAL_SUFFIX = '.partial'
#: in the partial directory: the data until it is published
PART_SUFFIX = '.part'
#: in the partial directory: which image it holds (resume only the same)
STATE_FILE = 'state.json'
#: the key files of an encrypted volume's image, after the data file name
KEY_SUFFIX = '.key'
PASSPHRASE_SUFFIX = '.key.luks-passphrase'  # noqa: S105 (a file name)
KEY_METADATA_SUFFIX = '.key.metadata.json'
#: a manifest larger than this is not one of ours
MANIFEST_LIMIT = 64 * 1024 * 1024
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


def is_plain_name(name: object) -> bool:
    """A file name inside one directory: not empty, no ``/``, not ``.``
    or ``..``, no NUL (so never absolute, never leaving the directory)."""
    return (
        isinstance(name, str)
        and name not in ('', '.', '..')
        and '/' not in name
        and '\0' not in name
    )


def _not_plain(path: str, st: os.stat_result) -> errors.InvalidInput:
    what = (
        'a symbolic link: osc-backup never writes through one'
        if stat.S_ISLNK(st.st_mode)
        else 'not a regular file'
    )
    return errors.InvalidInput(
        f"'{path}' is {what}. Remove it and run the command again."
    )


def is_plain_file(
    path: str, *, dir_fd: int | None = None, shown: str | None = None
) -> bool:
    """Whether a regular file is at ``path`` (False: nothing is).

    :param shown: ``path`` as messages show it (relative to ``dir_fd``).
    :raises errors.InvalidInput: a symlink or anything else is there.
    """
    try:
        st = os.lstat(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        raise _not_plain(shown or path, st)
    return True


def open_existing(
    path: str,
    *,
    dir_fd: int | None = None,
    shown: str | None = None,
    write: bool = True,
) -> int | None:
    """Open a file this tool made earlier (a partial download) for reading
    and (``write``) writing; None when there is none.

    :raises errors.InvalidInput: it is a symbolic link or not a regular
        file (never followed, never written through).
    """
    mode = os.O_RDWR if write else os.O_RDONLY
    try:
        fd = os.open(path, mode | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR):
            raise _not_plain(
                shown or path, os.lstat(path, dir_fd=dir_fd)
            ) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _not_plain(shown or path, st)
    return fd


def create_fresh(
    path: str, *, dir_fd: int | None = None, shown: str | None = None
) -> int:
    """:func:`create_file` after removing a regular file of ours there (a
    stale partial download).

    :raises errors.InvalidInput: a symlink or anything else is there, or a
        file appeared in between.
    """
    if is_plain_file(path, dir_fd=dir_fd, shown=shown):
        os.unlink(path, dir_fd=dir_fd)
    try:
        return create_file(path, dir_fd=dir_fd)
    except FileExistsError:
        raise errors.InvalidInput(
            f"'{shown or path}' appeared while starting: is another "
            'osc-backup writing it?'
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


def publish(
    src: str,
    dst: str,
    *,
    overwrite: bool = False,
    src_dir_fd: int | None = None,
) -> None:
    """Rename ``src`` to ``dst`` (same file system).

    Without ``overwrite`` an existing ``dst`` (a symlink too) is never
    replaced: the rename is a hard link plus an unlink, which fails when
    anything is at ``dst`` (unless it already is ``src`` itself: a rename
    cut short between the two). With it, ``dst`` is replaced by the
    rename (a symlink there is replaced, never followed).

    :raises FileExistsError: ``dst`` exists and ``overwrite`` is False.
    """
    if overwrite:
        os.replace(src, dst, src_dir_fd=src_dir_fd)
        return
    try:
        os.link(src, dst, src_dir_fd=src_dir_fd, follow_symlinks=False)
    except FileExistsError:
        if not _same_file(src, dst, src_dir_fd):
            raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK,
                             errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # no hard links here (some network and FUSE file systems)
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST),
                                  dst) from None
        os.rename(src, dst, src_dir_fd=src_dir_fd)
        return
    os.unlink(src, dir_fd=src_dir_fd)


def _same_file(src: str, dst: str, src_dir_fd: int | None) -> bool:
    try:
        return os.path.samestat(
            os.lstat(src, dir_fd=src_dir_fd), os.lstat(dst)
        )
    except OSError:
        return False


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
        # (saved in the set by 'backup volume create --download')
        manifest['encryption'] = {
            'format': 'luks',
            'cinder_encryption_key_id': key_id,
            'cinder_encryption_key_deletion_policy': record.get(
                'cinder_encryption_key_deletion_policy'
            ),
            'key_file': data_file + KEY_SUFFIX,
            'passphrase_file': data_file + PASSPHRASE_SUFFIX,
            'metadata_file': data_file + KEY_METADATA_SUFFIX,
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


def file_digest(path: str, algo: str, *, dir_fd: int | None = None) -> str:
    """The ``algo`` hex digest of a file (never through a symlink)."""
    h = hashlib.new(algo)
    fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC,
                 dir_fd=dir_fd)
    try:
        buf = bytearray(4 * MiB)
        view = memoryview(buf)
        while n := os.readv(fd, [buf]):
            h.update(view[:n])
    finally:
        os.close(fd)
    return h.hexdigest()


def checksum_candidates(data_path: str) -> list[str]:
    """Every name a checksum file of a set of ``data_path`` may have."""
    algos = sorted(
        {a for a in hashlib.algorithms_guaranteed if _ALGO.fullmatch(a)}
    )
    return [f'{data_path}.{a}' for a in algos]


def set_names(data_path: str, algo: str, *, key: bool) -> list[str]:
    """The final paths of a set, in the order they are published (the
    checksum file last)."""
    names = [data_path]
    if key:
        names += [data_path + KEY_SUFFIX, data_path + PASSPHRASE_SUFFIX,
                  data_path + KEY_METADATA_SUFFIX]
    return [*names, manifest_path(data_path), checksum_path(data_path, algo)]


def remove_stale_checksums(data_path: str, keep: str) -> None:
    """Remove checksum files of ``data_path`` other than ``keep`` (only
    regular files that are checksum files naming the data)."""
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
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if name in listed:
            _unlink(path)


# -- writing a set -------------------------------------------------------


def partial_path(data_path: str) -> str:
    directory, base = os.path.split(os.path.abspath(data_path))
    return os.path.join(directory, f'.{base}{PARTIAL_SUFFIX}')


class SetWriter:
    """A backup set being written in ``.<data file>.partial/``.

    Every file is created in that directory (0700, locked against a second
    run) through its descriptor, so nothing outside it is touched until
    :meth:`publish` renames the files into place.
    """

    def __init__(self, data_path: str) -> None:
        self.final = os.path.abspath(data_path)
        self.directory, self.name = os.path.split(self.final)
        self.path = partial_path(self.final)
        self.part = self.name + PART_SUFFIX
        self.fd: int | None = None

    # -- the directory
    def open(self, *, create: bool) -> bool:
        """Open and lock the partial directory, creating it if ``create``;
        False when there is none (and not ``create``).

        :raises errors.InvalidInput: a symlink or a file is at its name,
            it belongs to someone else, or another run holds it.
        """
        if self.fd is not None:
            return True
        if create:
            try:
                os.mkdir(self.path, DIR_MODE)
            except FileExistsError:
                pass
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            raise errors.InvalidInput(
                f"'{self.path}' is {_what(st)}, not the directory "
                'osc-backup writes a set in: remove it and run the command '
                'again.'
            )
        if st.st_uid != os.geteuid():
            raise errors.InvalidInput(
                f"'{self.path}' belongs to another user: osc-backup does "
                'not write in it. Remove it or choose another name.'
            )
        fd = os.open(
            self.path,
            os.O_RDONLY | os.O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC,
        )
        try:
            if not os.path.samestat(st, os.fstat(fd)):
                raise errors.InvalidInput(
                    f"'{self.path}' changed while it was opened."
                )
            os.fchmod(fd, DIR_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise errors.InvalidInput(
                    f"Another osc-backup is writing '{self.path}'."
                ) from None
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def shown(self, name: str) -> str:
        """``name`` in the partial directory, for messages."""
        return os.path.join(self.path, name)

    def entries(self) -> list[str]:
        return sorted(os.listdir(self._fd))

    @property
    def _fd(self) -> int:
        if self.fd is None:
            raise RuntimeError('the partial directory is not open')
        return self.fd

    def has(self, name: str) -> bool:
        return is_plain_file(name, dir_fd=self._fd, shown=self.shown(name))

    def read(self, name: str, limit: int = MANIFEST_LIMIT) -> bytes | None:
        """A small file of the partial directory; None when absent."""
        fd = open_existing(name, dir_fd=self._fd, shown=self.shown(name),
                           write=False)
        if fd is None:
            return None
        with os.fdopen(fd, 'rb') as f:
            return f.read(limit + 1)[:limit]

    def read_state(self) -> dict[str, Any] | None:
        try:
            blob = self.read(STATE_FILE, 1 * MiB)
            value = json.loads(blob) if blob is not None else None
        except (OSError, ValueError, errors.InvalidInput):
            return None
        return value if isinstance(value, dict) else None

    def write_state(self, state: Mapping[str, Any]) -> None:
        self.put(STATE_FILE, json.dumps(dict(state)).encode())

    def put(self, name: str, data: bytes) -> None:
        """Create ``name`` (0600, exclusive; an earlier file of ours under
        that name is removed first) with ``data``, fsynced."""
        fd = create_fresh(name, dir_fd=self._fd, shown=self.shown(name))
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self._fd)

    def clear(self) -> None:
        """Remove what an earlier run left in the directory (its files
        only: a directory in it is refused)."""
        for name in self.entries():
            st = os.lstat(name, dir_fd=self._fd)
            if stat.S_ISDIR(st.st_mode):
                raise errors.InvalidInput(
                    f"'{self.shown(name)}' is a directory osc-backup did "
                    'not make: remove it and run the command again.'
                )
            os.unlink(name, dir_fd=self._fd)

    def discard(self) -> None:
        """Remove the directory and everything in it."""
        if self.fd is None and not self.open(create=False):
            return
        self.clear()
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(self.path)

    # -- the data
    def open_data(self, *, resume: bool) -> int:
        """The data file (``<name>.part``), open for writing: the one an
        earlier run left when ``resume``, else a new empty one."""
        shown = self.shown(self.part)
        if resume:
            fd = open_existing(self.part, dir_fd=self._fd, shown=shown)
            if fd is not None:
                return fd
        return create_fresh(self.part, dir_fd=self._fd, shown=shown)

    # -- into place
    def publish_one(self, name: str, dst: str, *, overwrite: bool) -> None:
        """Rename ``name`` out of the directory to ``dst``
        (:func:`publish`)."""
        publish(name, dst, overwrite=overwrite, src_dir_fd=self._fd)

    def publish(
        self,
        members: list[tuple[str, str]],
        *,
        overwrite: bool,
        verify: Callable[[str, str], bool],
    ) -> None:
        """Rename every ``(name here, final path)`` into place, in order
        (the checksum file last), then remove the directory.

        A member that is not here any more must already be at its final
        path (a run stopped between two renames) and ``verify(path, name)``
        it; anything else is an error.
        """
        os.fsync(self._fd)
        fsync_dir(self.directory)
        if overwrite:
            remove_stale_checksums(self.final, keep=members[-1][1])
        for name, final in members:
            if self.has(name):
                try:
                    self.publish_one(name, final, overwrite=overwrite)
                except FileExistsError:
                    raise errors.InvalidInput(
                        f"'{final}' appeared while the set was written: "
                        'osc-backup does not replace it (pass --overwrite '
                        f"to). The set is kept in '{self.path}'."
                    ) from None
            elif not _verified(final, name, verify):
                raise errors.BackupError(
                    f"'{self.shown(name)}' is missing and '{final}' is not "
                    'the file it was: the set cannot be finished. Remove '
                    f"'{self.path}' and run the command again."
                )
        fsync_dir(self.directory)
        self.remove(STATE_FILE)
        self.discard()
        fsync_dir(self.directory)


def _verified(
    final: str, name: str, verify: Callable[[str, str], bool]
) -> bool:
    """Whether ``final`` is a regular file (not a symlink) ``verify``
    accepts as the set's ``name``."""
    try:
        return stat.S_ISREG(os.lstat(final).st_mode) and verify(final, name)
    except OSError:
        return False


def _what(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode):
        return 'a symbolic link'
    if stat.S_ISREG(st.st_mode):
        return 'a file'
    return 'not a directory'


# -- reading a set -------------------------------------------------------


class InvalidSet(errors.InvalidInput):
    """A backup set that is malformed, incomplete or was changed."""


@dataclass
class BackupSet:
    """A validated backup set (see :func:`load_set`)."""

    manifest: dict[str, Any]
    manifest_path: str
    #: the manifest exactly as read (its hash is in the checksum file)
    manifest_raw: bytes
    #: the set's directory (the manifest's)
    directory: str
    #: the data file's path (a symlink inside the set resolved)
    data: str
    version: int
    #: the data's hash as the set records it
    hash_algo: str
    hash_value: str
    checksum_file: str | None = None
    #: the checksum file's lines: {file name: hex digest}
    checksums: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.manifest['data']['size'])

    @property
    def encryption(self) -> dict[str, Any] | None:
        value = self.manifest.get('encryption')
        return value if isinstance(value, dict) else None

    def member(self, name: str) -> str:
        """The path of ``name`` (a plain name the manifest gave) in the
        set's directory; a symlink must stay in that directory.

        :raises InvalidSet: it leaves the directory or is not a file.
        """
        return _member(self.directory, name, self.manifest_path)

    def read_member(self, name: str, limit: int = MANIFEST_LIMIT) -> bytes:
        """A small file of the set, checked against the checksum file
        when the checksum file lists it.

        :raises InvalidSet: missing, not a file, or changed.
        """
        path = self.member(name)
        blob = _read_small(path, 'a file of the backup set', limit)
        want = self.checksums.get(name)
        if want is not None:
            got = hashlib.new(self.hash_algo, blob).hexdigest()
            if got != want:
                raise InvalidSet(
                    f"'{path}' does not match '{self.checksum_file}' "
                    f'({self.hash_algo} {got}, listed {want}): the set was '
                    'changed or is damaged.'
                )
        return blob

    def verify_data(self) -> None:
        """The data file's size and hash against the manifest.

        :raises InvalidSet: they differ.
        """
        have = os.path.getsize(self.data)
        if have != self.size:
            raise InvalidSet(
                f"'{self.data}' has {have} bytes, the manifest says "
                f'{self.size}: the file is incomplete or not the one that '
                'was saved.'
            )
        got = file_digest(self.data, self.hash_algo)
        if got != self.hash_value:
            raise InvalidSet(
                f"'{self.data}' does not match its backup set: "
                f'{self.hash_algo} {got}, recorded {self.hash_value}. The '
                'file is damaged or was changed.'
            )


def _read_small(path: str, what: str, limit: int = MANIFEST_LIMIT) -> bytes:
    """The bytes of ``path`` (``what`` it is, for messages)."""
    try:
        with open(path, 'rb') as f:
            blob = f.read(limit + 1)
    except FileNotFoundError:
        raise InvalidSet(f"No such file: '{path}' ({what}).") from None
    except OSError as exc:
        raise InvalidSet(
            f"Cannot read '{path}' ({what}): {exc.strerror}."
        ) from None
    if len(blob) > limit:
        raise InvalidSet(f"'{path}' is too large for {what}.")
    return blob


def _member(directory: str, name: str, mpath: str) -> str:
    if not is_plain_name(name):
        raise InvalidSet(
            f"'{mpath}' names {name!r}: a backup set only holds plain file "
            'names in its own directory.'
        )
    path = os.path.join(directory, name)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    if stat.S_ISLNK(st.st_mode):
        real = os.path.realpath(path)
        if os.path.dirname(real) != os.path.realpath(directory):
            raise InvalidSet(
                f"'{path}' is a symbolic link leading out of the backup "
                f"set's directory (to '{real}'): refused."
            )
        path = real
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return path
    if not stat.S_ISREG(st.st_mode):
        raise InvalidSet(f"'{path}' of the backup set is not a file.")
    return path


_HEX = re.compile(r'[0-9a-f]{8,256}')
_NONE = type(None)
#: manifest keys of 'image': the types they may have
_IMAGE_TYPES: dict[str, tuple[type, ...]] = {
    'id': (str, _NONE),
    'name': (str, _NONE),
    'disk_format': (str, _NONE),
    'container_format': (str, _NONE),
    'size': (int, _NONE),
    'virtual_size': (int, _NONE),
    'min_disk': (int, _NONE),
    'min_ram': (int, _NONE),
    'checksum': (str, _NONE),
    'os_hash_algo': (str, _NONE),
    'os_hash_value': (str, _NONE),
    'visibility': (str, _NONE),
    'protected': (bool, _NONE),
    'tags': (list, _NONE),
}


def validate_manifest(manifest: Any, mpath: str) -> tuple[int, str, str]:
    """Check the manifest's format version, required keys and types, and
    that every file it names is a plain name.

    :returns: (format version, data hash algorithm, data hash value)
    :raises InvalidSet: one line saying what is wrong.
    """

    def bad(what: str) -> InvalidSet:
        return InvalidSet(
            f"'{mpath}' is not a valid backup set manifest: {what}."
        )

    def typed(value: Any, types: tuple[type, ...], what: str) -> Any:
        if (isinstance(value, bool) and bool not in types) or not isinstance(
            value, types
        ):
            names = ' or '.join(
                'null' if t is _NONE else t.__name__ for t in types
            )
            got = 'null' if value is None else type(value).__name__
            raise bad(f'{what} must be {names}, not {got}')
        return value

    if not isinstance(manifest, dict) or manifest.get('format') != FORMAT:
        raise InvalidSet(f"'{mpath}' is not an osc-backup image manifest.")
    version: int = typed(
        manifest.get('format_version'), (int,), 'format_version'
    )
    if version > FORMAT_VERSION:
        raise InvalidSet(
            f"'{mpath}' has manifest format version {version}, newer than "
            f'this osc-backup understands ({FORMAT_VERSION}): upgrade '
            'osc-backup.'
        )
    if version < 1:
        raise bad(f'format_version {version} does not exist')
    data: dict[str, Any] = typed(manifest.get('data'), (dict,), 'data')
    if not is_plain_name(data.get('file')):
        raise bad(
            f"data.file {data.get('file')!r} is not a plain file name in "
            "the set's directory"
        )
    typed(data.get('size'), (int,), 'data.size')
    if data['size'] < 0:
        raise bad('data.size is negative')
    for key in ('verified_algo', 'verified_value'):
        typed(data.get(key), (str, _NONE), f'data.{key}')
    if version >= 2:
        raw_algo = data.get('hash_algo')
        algo = hash_algorithm(raw_algo) or ''
        if algo != raw_algo:
            raise bad(f'data.hash_algo {raw_algo!r} is not a hash algorithm')
        value: str = typed(data.get('hash_value'), (str,), 'data.hash_value')
        expected_file = os.path.basename(checksum_path(data['file'], algo))
        if data.get('checksum_file') != expected_file:
            raise bad(f'data.checksum_file must be {expected_file!r}')
    else:
        algo = 'sha256'
        value = typed(data.get('sha256'), (str,), 'data.sha256')
    if not _HEX.fullmatch(value):
        raise bad(f'the data hash {value[:80]!r} is not a hex digest')
    image: dict[str, Any] = typed(manifest.get('image'), (dict,), 'image')
    for key, types in _IMAGE_TYPES.items():
        typed(image.get(key), types, f'image.{key}')
    if not all(isinstance(t, str) for t in image.get('tags') or []):
        raise bad('image.tags must be strings')
    typed(manifest.get('glance_record'), (dict,), 'glance_record')
    for key in ('backup', 'source'):
        typed(manifest.get(key), (dict, _NONE), key)
    enc = typed(manifest.get('encryption'), (dict, _NONE), 'encryption')
    if enc is not None:
        key_id = enc.get('cinder_encryption_key_id')
        typed(key_id, (str,), 'encryption.cinder_encryption_key_id')
        for key in ('key_file', 'passphrase_file', 'metadata_file'):
            name = enc.get(key)
            if name is not None and not is_plain_name(name):
                raise bad(
                    f'encryption.{key} {name!r} is not a plain file name '
                    "in the set's directory"
                )
    return version, algo, value


def manifest_of(path: str) -> str:
    """The manifest of the set ``path`` names: a manifest, or a data file
    with its manifest next to it."""
    path = os.path.abspath(path)
    if path.endswith(MANIFEST_SUFFIX):
        return path
    if os.path.lexists(manifest_path(path)):
        return manifest_path(path)
    raise InvalidSet(
        f"'{path}' is neither a manifest ({MANIFEST_SUFFIX}) nor a data "
        f"file with a manifest next to it ({manifest_path(path)})."
    )


def load_set(path: str) -> BackupSet:
    """Read and validate a backup set from its manifest or data file.

    The manifest is validated (:func:`validate_manifest`), the data file
    must be in the set's directory, and the checksum file (required from
    format 2 on) must list the data with the manifest's hash and the
    manifest with its own. The data itself is checked by
    :meth:`BackupSet.verify_data`.

    :raises InvalidSet: with one clear line; nothing was changed anywhere.
    """
    mpath = manifest_of(path)
    raw = _read_small(mpath, 'a manifest')
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise InvalidSet(
            f"Cannot read manifest '{mpath}': not JSON ({exc})."
        ) from None
    version, algo, value = validate_manifest(manifest, mpath)
    directory = os.path.dirname(mpath)
    data_name = manifest['data']['file']
    data = _member(directory, data_name, mpath)
    if not os.path.isfile(data):
        raise InvalidSet(
            f"The data file of '{mpath}' is missing: '{data}'."
        )
    found = BackupSet(
        manifest=manifest, manifest_path=mpath, manifest_raw=raw,
        directory=directory, data=data, version=version,
        hash_algo=algo, hash_value=value,
    )
    cname = (
        manifest['data']['checksum_file'] if version >= 2
        else data_name + LEGACY_CHECKSUM_SUFFIX
    )
    cpath = _member(directory, cname, mpath)
    if not os.path.exists(cpath):
        if version >= 2:
            raise InvalidSet(
                f"The checksum file of '{mpath}' is missing: '{cpath}'. "
                'The set is incomplete.'
            )
        return found
    try:
        with open(cpath, encoding='utf-8') as f:
            listed = parse_checksum_file(f.read(MANIFEST_LIMIT))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InvalidSet(
            f"Cannot read checksum file '{cpath}': {exc}"
        ) from None
    found.checksum_file, found.checksums = cpath, listed
    if listed.get(data_name) != value:
        raise InvalidSet(
            f"'{cpath}' lists {data_name!r} with "
            f'{listed.get(data_name) or "no hash"}, the manifest with '
            f'{value}: the set was changed or is damaged.'
        )
    mname = os.path.basename(mpath)
    if version >= 2 or mname in listed:
        got = hashlib.new(algo, raw).hexdigest()
        if listed.get(mname) != got:
            raise InvalidSet(
                f"'{mpath}' does not match '{cpath}' ({algo} {got}, listed "
                f'{listed.get(mname) or "nothing"}): the manifest was '
                'changed or is damaged.'
            )
    return found


def data_hash(manifest: Mapping[str, Any]) -> tuple[str, str]:
    """(algorithm, hex digest) of the data file as the set records it:
    format 2 its one hash, format 1 the sha256 of its ``.sha256`` file."""
    data = manifest['data']
    if 'hash_algo' in data:
        return str(data['hash_algo']), str(data['hash_value'])
    return 'sha256', str(data['sha256'])


# -- space ---------------------------------------------------------------


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


# -- finding and removing sets (backup list/prune --dir) -----------------

#: the hidden directory a set is moved into while it is removed
REMOVING_SUFFIX = '.removing'


def find_manifests(directory: str) -> list[str]:
    """The manifest paths of the sets under ``directory`` (recursively).

    Symbolic links are never followed (neither to a directory nor to a
    manifest), and hidden directories (a set being written or removed)
    are skipped.
    """
    found = []
    for here, dirs, files in os.walk(directory, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        for name in sorted(files):
            if name.startswith('.') or not name.endswith(MANIFEST_SUFFIX):
                continue
            path = os.path.join(here, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.append(path)
    return found


def set_members(found: BackupSet) -> list[str]:
    """The names of every file of a loaded set that exists, manifest
    first, in its directory (plain names, never followed out)."""
    manifest = found.manifest
    data_name = manifest['data']['file']
    names = [os.path.basename(found.manifest_path), data_name]
    if found.version >= 2:
        names.append(manifest['data']['checksum_file'])
    else:
        names.append(data_name + LEGACY_CHECKSUM_SUFFIX)
    enc = found.encryption or {}
    for key in ('key_file', 'passphrase_file', 'metadata_file'):
        if is_plain_name(enc.get(key)):
            names.append(enc[key])
    names += [data_name + s for s in (
        KEY_SUFFIX, PASSPHRASE_SUFFIX, KEY_METADATA_SUFFIX)]
    seen: list[str] = []
    for name in names:
        if name not in seen and is_plain_name(name) and os.path.lexists(
            os.path.join(found.directory, name)
        ):
            seen.append(name)
    return seen


def remove_set(found: BackupSet) -> list[str]:
    """Remove a set as a whole; the paths it removed.

    Its files are first renamed into a hidden directory
    ``.<data file>.removing`` next to them, the manifest first (from then
    on no reader sees the set, or half of it), then that directory is
    emptied and removed. A symbolic link is removed as a link, never
    followed. A removal that was cut short leaves the hidden directory,
    which a later removal of the same set reuses.
    """
    directory = found.directory
    data_name = found.manifest['data']['file']
    hidden = os.path.join(directory, f'.{data_name}{REMOVING_SUFFIX}')
    try:
        os.mkdir(hidden, DIR_MODE)
    except FileExistsError:
        st = os.lstat(hidden)
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidSet(
                f"'{hidden}' is in the way of removing the set of "
                f"'{found.manifest_path}' and is not a directory."
            ) from None
    removed = []
    for name in set_members(found):
        os.rename(os.path.join(directory, name), os.path.join(hidden, name))
        removed.append(os.path.join(directory, name))
    fsync_dir(directory)
    for name in os.listdir(hidden):
        os.unlink(os.path.join(hidden, name))
    os.rmdir(hidden)
    fsync_dir(directory)
    return removed
