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

"""``backup image save``: a Glance image -> a verified local backup set.

:func:`save_image` is what every verb that downloads calls (``backup
image save``, ``backup volume create --download``, ``backup server create
--download``). It guarantees that a file under the final name is complete
and verified:

* the data goes to a hidden temporary name in the target folder
  (``.<name>.part``, with a ``.part.json`` sidecar naming the image and
  its hash); it is fsynced and renamed only after the hash Glance recorded
  (``os_hash_algo``/``os_hash_value``, else the md5 ``checksum``) matched;
* a run that stops half-way leaves the partial file; the next run for the
  same image (same ID and hash) re-hashes it and continues where it
  stopped.

The transfer itself is :mod:`osc_backup.common.transfer`, the set format
:mod:`osc_backup.common.backup_set`.

Plain module: takes an openstacksdk ``Connection``; no cliff.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from osc_backup.common import backup_set
from osc_backup.common import errors
from osc_backup.common import lookup
from osc_backup.common import tags
from osc_backup.common import transfer
from osc_backup.common.cleanup import Cleanup
from osc_backup.common.progress import NullReporter, Reporter
from osc_backup.common.transfer import HashMismatch, TransferOptions

__all__ = ['HashMismatch', 'SavedImage', 'TransferOptions', 'save_image']

LOG = logging.getLogger(__name__)

PART_SUFFIX = '.part'
STATE_SUFFIX = '.part.json'
INVALID_SUFFIX = '.unverified'


@dataclass
class SavedImage:
    """The result of :func:`save_image`."""

    image_id: str
    name: str | None
    file: str
    manifest: str
    checksum_file: str
    size: int
    #: the data's one hash (the checksum file's): Glance's
    hash_algo: str
    hash_value: str
    #: False only for an image without any hash (``allow_unverified``)
    verified: bool
    #: bytes already on disk from an earlier run (0: a fresh download)
    resumed_from: int
    #: transient errors retried in this run
    retries: int
    #: seconds for the whole run
    duration: float
    #: bytes received in this run per second of the run
    throughput: float

    @property
    def files(self) -> list[str]:
        return [self.file, self.manifest, self.checksum_file]


# -- naming and state ------------------------------------------------------


def default_filename(record: Mapping[str, Any]) -> str:
    """``<name>-<first 8 of ID>.<disk format>`` (container format when not
    bare), every part reduced to a safe name (no ``/``, ``..``, leading
    dot or control character, whatever the server returned)."""
    image_id = backup_set.safe_name(record.get('id'), 'image')
    name = backup_set.safe_name(record.get('name') or image_id, 'image')
    container = record.get('container_format')
    ext = (
        record.get('disk_format') or 'img'
        if container in (None, 'bare')
        else container
    )
    safe_ext = backup_set.safe_name(ext, 'img', limit=16)
    return f'{name}-{image_id[:8].strip(".-")}.{safe_ext}'


def _part_paths(final: str) -> tuple[str, str]:
    directory, base = os.path.split(final)
    part = os.path.join(directory, f'.{base}{PART_SUFFIX}')
    state = os.path.join(directory, f'.{base}{STATE_SUFFIX}')
    return part, state


def _state(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        'tool': tags.TOOL,
        'image_id': record.get('id'),
        'os_hash_algo': record.get('os_hash_algo'),
        'os_hash_value': record.get('os_hash_value'),
        'checksum': record.get('checksum'),
        'size': record.get('size'),
    }


def _read_state(path: str) -> dict[str, Any] | None:
    fd = None
    try:
        fd = backup_set.open_existing(path)
        if fd is None:
            return None
        with os.fdopen(fd, encoding='utf-8') as f:
            fd = None
            value = json.load(f)
    except (OSError, ValueError, errors.InvalidInput):
        return None
    finally:
        if fd is not None:
            os.close(fd)
    return value if isinstance(value, dict) else None


_HEX = re.compile(r'[0-9a-fA-F]{8,256}')


def expected_hash(
    record: Mapping[str, Any], *, allow_unverified: bool = False
) -> transfer.Expected:
    """Which hash to verify: os_hash_algo/os_hash_value, else md5 (an
    algorithm this Python lacks, or a value that is not hex, counts as
    none)."""
    size = record.get('size')
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        size = None
    raw_algo = record.get('os_hash_algo')
    algo = backup_set.hash_algorithm(raw_algo)
    value = record.get('os_hash_value')
    if algo and isinstance(value, str) and _HEX.fullmatch(value):
        return transfer.Expected(algo, value.lower(), size)
    if raw_algo:
        LOG.debug('hash algorithm %r not usable here', raw_algo)
    checksum = record.get('checksum')
    if isinstance(checksum, str) and _HEX.fullmatch(checksum):
        return transfer.Expected('md5', checksum.lower(), size)
    if allow_unverified:
        return transfer.Expected(None, None, size)
    raise errors.InvalidInput(
        f"Image {record.get('id')} has no hash this tool can verify "
        f'(os_hash_algo={raw_algo!r}, no md5 checksum); pass '
        '--allow-unverified to download it anyway.'
    )


# -- the public entry point ------------------------------------------------


def find_image(conn: Any, image: Any) -> str:
    """The ID of ``image`` (a name, an ID or an Image object)."""
    if not isinstance(image, str):
        return str(image.id)
    return str(lookup.find(conn.image.find_image, 'image', image).id)


_NOT_ACTIVE = {
    'queued': 'has no data yet',
    'saving': 'is still being uploaded; wait until it is active',
    'uploading': 'is still being uploaded; wait until it is active',
    'importing': 'is still being imported; wait until it is active',
    'deactivated': (
        'is deactivated: its data cannot be downloaded until an '
        'administrator reactivates it'
    ),
    'killed': 'failed to upload and has no usable data',
    'pending_delete': 'is being deleted',
    'deleted': 'is deleted',
}


def _get_record(conn: Any, image_id: str) -> dict[str, Any] | None:
    """Glance's JSON for the image; None when there is no such image."""
    resp = conn.image.get(f'/images/{image_id}', raise_exc=False)
    if resp.status_code == 404:
        return None
    if resp.status_code != 200:
        raise errors.BackupError(
            f'Reading image {image_id} failed: HTTP {resp.status_code}'
        )
    record: dict[str, Any] = resp.json()
    return record


def image_record(conn: Any, image_id: str) -> dict[str, Any]:
    """Glance's JSON for the image, every property included."""
    record = _get_record(conn, image_id)
    if record is None:
        raise errors.InvalidInput(f'No image with ID {image_id} found.')
    return record


_UUID = re.compile(
    r'[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}',
    re.IGNORECASE,
)


def lookup_image(conn: Any, image: Any) -> dict[str, Any]:
    """The record of ``image`` (a name, an ID or an Image object).

    An argument shaped like an ID costs one request (the record itself)
    instead of two (openstacksdk's find, then the record); when no image
    has that ID it is looked up as a name, as openstacksdk's find does.
    """
    if isinstance(image, str) and _UUID.fullmatch(image):
        record = _get_record(conn, image)
        if record is not None:
            return record
    return image_record(conn, find_image(conn, image))


def _resolve_target(
    target: str | os.PathLike[str], as_file: bool | None, record: Any
) -> str:
    path = os.fspath(target)
    if as_file is None:
        as_file = not os.path.isdir(path)
    if not as_file:
        try:
            backup_set.make_dirs(path)
        except OSError as exc:
            raise errors.InvalidInput(
                f"Cannot create directory '{path}': {exc.strerror}."
            ) from None
        path = os.path.join(path, default_filename(record))
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise errors.InvalidInput(f"Directory '{directory}' does not exist.")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise errors.InvalidInput(f"Directory '{directory}' is not writable.")
    return path


def save_image(
    conn: Any,
    image: Any,
    target: str | os.PathLike[str] = '.',
    *,
    as_file: bool | None = None,
    overwrite: bool = False,
    keep_partial: bool = False,
    resume: bool = True,
    allow_unverified: bool = False,
    reporter: Reporter | None = None,
    options: TransferOptions | None = None,
) -> SavedImage:
    """Download ``image`` into a verified backup set; see the module doc.

    :param conn: an openstacksdk Connection.
    :param image: name, ID or ``openstack.image.v2.image.Image``.
    :param target: a directory (the file is named after the image) or,
        with ``as_file=True`` or when it is not an existing directory, the
        data file's path. The manifest and checksum file go next to it.
    :param overwrite: replace an existing backup set of that name.
    :param keep_partial: on a hash mismatch keep the data as
        ``<file>.unverified`` instead of deleting it.
    :param resume: continue a partial download of the same image (same ID
        and hash) left by an earlier run.
    :param allow_unverified: download an image that has no hash at all.
    :raises errors.InvalidInput: nothing was downloaded (bad image, no
        space, the file exists...).
    :raises HashMismatch: the data did not verify; nothing is left under
        the final name.
    :raises errors.BackupError: the download failed; a partial file is
        kept for the next run to resume.
    """
    reporter = reporter or NullReporter()
    options = options or TransferOptions()
    started_wall = time.time()
    started = options.clock()

    record = lookup_image(conn, image)
    image_id = str(record['id'])
    status = record.get('status')
    if status != 'active':
        why = _NOT_ACTIVE.get(str(status), 'is not active')
        raise errors.InvalidInput(
            f"Image {image_id} is '{status}': it {why}. Only 'active' "
            'images can be saved.'
        )
    expected = expected_hash(record, allow_unverified=allow_unverified)
    algo = expected.algorithm or backup_set.DEFAULT_ALGO
    final = _resolve_target(target, as_file, record)
    directory = os.path.dirname(final)
    set_files = [
        final,
        backup_set.manifest_path(final),
        *backup_set.checksum_candidates(final),
    ]
    if not overwrite:
        existing = [p for p in set_files if os.path.lexists(p)]
        if existing:
            raise errors.InvalidInput(
                f"'{existing[0]}' already exists: pass --overwrite to "
                'replace it, or choose another --file/--dir.'
            )
    part, state_path = _part_paths(final)

    # open (or create) the partial file and lock it against a second run;
    # a symlink there is refused, never followed
    state = _state(record)
    fd = backup_set.open_existing(part)
    if fd is None:
        fd = backup_set.create_fresh(part)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise errors.InvalidInput(
                f"Another download is writing '{part}'."
            ) from None
        offset = 0
        if resume and _read_state(state_path) == state:
            offset = os.fstat(fd).st_size
            if expected.size is not None and offset > expected.size:
                offset = 0
            elif expected.size is None or offset < expected.size:
                # continue on a block boundary, so O_DIRECT stays usable
                offset -= offset % transfer.DIRECT_ALIGN
        if expected.size is not None:
            try:
                backup_set.check_free_space(directory, expected.size - offset)
            except errors.InvalidInput:
                if offset == 0:
                    _remove(part, state_path)
                raise
        if offset == 0:
            os.ftruncate(fd, 0)
            backup_set.write_atomic(
                state_path, json.dumps(state).encode(), overwrite=True
            )
        got = _download(
            conn,
            image_id,
            record,
            fd,
            offset,
            expected,
            algo=algo,
            final=final,
            part=part,
            state_path=state_path,
            overwrite=overwrite,
            keep_partial=keep_partial,
            reporter=reporter,
            options=options,
        )
    finally:
        os.close(fd)

    value = expected.value or got.digests[algo]
    manifest = backup_set.build_manifest(
        conn,
        record,
        data_file=os.path.basename(final),
        size=os.path.getsize(final),
        hash_algo=algo,
        hash_value=value,
        verified=expected.algorithm is not None,
        started=started_wall,
        finished=time.time(),
    )
    mpath, cpath = backup_set.write_set(final, manifest, overwrite=overwrite)
    duration = options.clock() - started
    return SavedImage(
        image_id=image_id,
        name=record.get('name'),
        file=final,
        manifest=mpath,
        checksum_file=cpath,
        size=manifest['data']['size'],
        hash_algo=algo,
        hash_value=value,
        verified=expected.algorithm is not None,
        resumed_from=got.resumed_from,
        retries=got.retries,
        duration=duration,
        throughput=got.received / duration if duration > 0 else 0.0,
    )


def _download(
    conn: Any,
    image_id: str,
    record: Mapping[str, Any],
    fd: int,
    offset: int,
    expected: transfer.Expected,
    *,
    algo: str,
    final: str,
    part: str,
    state_path: str,
    overwrite: bool,
    keep_partial: bool,
    reporter: Reporter,
    options: TransferOptions,
) -> transfer.Received:
    """Download, verify (one hash: ``algo``), fsync and rename."""
    cleanup = Cleanup(reporter)  # turns SIGINT/SIGTERM into an exception
    try:
        with cleanup.guard():
            try:
                received = transfer.receive(
                    conn.image,
                    f'/images/{image_id}/file',
                    fd,
                    offset,
                    expected,
                    algorithms=[algo],
                    label=record.get('name') or image_id,
                    what=f'image {image_id}',
                    reporter=reporter,
                    options=options,
                )
            except HashMismatch as exc:
                _discard(part, state_path, final, keep_partial, overwrite,
                         reporter)
                raise HashMismatch(
                    f'Image {image_id} did not verify: got {exc.got}, Glance '
                    f'recorded {expected.algorithm} {expected.value}. The '
                    'data is corrupt (in the cloud or on the way); nothing '
                    f"was saved as '{final}'.",
                    got=exc.got,
                ) from None
            reporter.step('Verified; flushing to disk')
            os.fsync(fd)
            try:
                backup_set.publish(part, final, overwrite=overwrite)
            except FileExistsError:
                raise errors.InvalidInput(
                    f"'{final}' appeared during the download: osc-backup "
                    'does not replace it (pass --overwrite to). The '
                    f"verified data is kept in '{part}'."
                ) from None
            backup_set.fsync_dir(os.path.dirname(final))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(state_path)
    except KeyboardInterrupt:
        if os.path.exists(part):
            reporter.note(
                f"Interrupted: the partial download is kept in '{part}'; "
                'run the same command again to resume it.'
            )
        raise
    except HashMismatch:
        raise
    except errors.BackupError as exc:
        if os.path.exists(part) and not isinstance(exc, errors.InvalidInput):
            raise errors.BackupError(
                f"{exc}\nThe partial download is kept in '{part}'; run the "
                'same command again to resume it.'
            ) from exc
        raise
    return received


def _remove(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _discard(
    part: str,
    state_path: str,
    final: str,
    keep_partial: bool,
    overwrite: bool,
    reporter: Reporter,
) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state_path)
    if keep_partial:
        kept = final + INVALID_SUFFIX
        try:
            backup_set.publish(part, kept, overwrite=overwrite)
        except FileExistsError:
            reporter.note(
                f"'{kept}' exists: the unverified data is not kept (pass "
                '--overwrite to replace it).'
            )
        else:
            reporter.note(f"The unverified data is kept in '{kept}'.")
            return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(part)
