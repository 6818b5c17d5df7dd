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
--download``). It writes the set through
:class:`osc_backup.common.backup_set.SetWriter`, so a file under a final
name is always complete and verified:

* the data, the key of an encrypted volume's image, the manifest and the
  checksum file are written in a hidden ``.<name>.partial/`` directory
  (with a ``state.json`` naming the image and its hash); the data is
  checked against the hash Glance recorded (``os_hash_algo``/
  ``os_hash_value``, else the md5 ``checksum``) while it arrives; only a
  complete, fsynced set is renamed into place;
* a run that stops half-way leaves that directory; the next run for the
  same image (same ID and hash) re-hashes the partial data and continues
  where it stopped, or finishes the renames of a complete set.

The transfer itself is :mod:`osc_backup.common.transfer`, the set format
:mod:`osc_backup.common.backup_set`.

Plain module: takes an openstacksdk ``Connection``; no cliff.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from osc_backup.common import backup_set
from osc_backup.common import errors
from osc_backup.common import lookup
from osc_backup.common import tags
from osc_backup.common import transfer
from osc_backup.common.cleanup import Cleanup
from osc_backup.common.progress import NullReporter, Reporter
from osc_backup.common.transfer import HashMismatch, TransferOptions
from osc_backup.procedures import secrets

__all__ = ['HashMismatch', 'SavedImage', 'TransferOptions', 'save_image']

LOG = logging.getLogger(__name__)

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
    #: the key of an encrypted volume's image, saved with it (0600)
    key_files: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        return [self.file, self.manifest, self.checksum_file,
                *self.key_files]


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


def _state(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        'tool': tags.TOOL,
        'image_id': record.get('id'),
        'os_hash_algo': record.get('os_hash_algo'),
        'os_hash_value': record.get('os_hash_value'),
        'checksum': record.get('checksum'),
        'size': record.get('size'),
    }


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
    with_key: bool | None = None,
    reporter: Reporter | None = None,
    options: TransferOptions | None = None,
) -> SavedImage:
    """Download ``image`` into a verified backup set; see the module doc.

    :param conn: an openstacksdk Connection.
    :param image: name, ID or ``openstack.image.v2.image.Image``.
    :param target: a directory (the file is named after the image) or,
        with ``as_file=True`` or when it is not an existing directory, the
        data file's path. The other files of the set go next to it.
    :param overwrite: replace an existing backup set of that name.
    :param keep_partial: on a hash mismatch keep the data as
        ``<file>.unverified`` instead of deleting it.
    :param resume: continue what an earlier run for the same image (same
        ID and hash) left.
    :param allow_unverified: download an image that has no hash at all.
    :param with_key: the key of an encrypted volume's image
        (``cinder_encryption_key_id``) is saved in the set: True, it must
        be (else nothing is downloaded); None, when it can be read (else
        a warning); False, never.
    :raises errors.InvalidInput: nothing was downloaded (bad image, no
        space, the file exists...).
    :raises HashMismatch: the data did not verify; nothing is left under
        the final name.
    :raises errors.BackupError: the download failed; what it got is kept
        for the next run to resume.
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
    writer = backup_set.SetWriter(final)
    try:
        state = _state(record)
        if writer.open(create=False) and writer.read_state() == state:
            cname = os.path.basename(backup_set.checksum_path(final, algo))
            if resume and writer.has(cname):
                reporter.step(
                    f"Finishing the backup set in '{writer.path}'"
                )
                return _finish_sealed(
                    writer, algo, overwrite=overwrite, image_id=image_id,
                    started=started, options=options, reporter=reporter,
                )
        if not overwrite:
            _refuse_existing(writer, final)
        key_files = _key_files(conn, record, final, with_key, reporter)
        writer.open(create=True)
        if not (resume and writer.read_state() == state):
            writer.clear()
            writer.write_state(state)
        got, size = _receive(
            conn, record, writer, expected, algo,
            resume=resume, overwrite=overwrite, keep_partial=keep_partial,
            reporter=reporter, options=options,
        )
        value = expected.value or got.digests[algo]
        manifest = backup_set.build_manifest(
            conn,
            record,
            data_file=writer.name,
            size=size,
            hash_algo=algo,
            hash_value=value,
            verified=expected.algorithm is not None,
            started=started_wall,
            finished=time.time(),
        )
        _seal(writer, manifest, key_files)
        saved = _publish(writer, algo, overwrite=overwrite,
                         reporter=reporter)
    finally:
        writer.close()
    duration = options.clock() - started
    saved.resumed_from = got.resumed_from
    saved.retries = got.retries
    saved.duration = duration
    saved.throughput = got.received / duration if duration > 0 else 0.0
    return saved


def _refuse_existing(writer: backup_set.SetWriter, final: str) -> None:
    """Nothing of a set may be at the final names without --overwrite."""
    names = [
        final,
        backup_set.manifest_path(final),
        *backup_set.checksum_candidates(final),
        *secrets.key_paths(final).values(),
    ]
    existing = [p for p in names if os.path.lexists(p)]
    if not existing:
        return
    if writer.fd is not None and set(writer.entries()) <= {
        backup_set.STATE_FILE
    }:
        writer.discard()  # what a finished run left: nothing to resume
    raise errors.InvalidInput(
        f"'{existing[0]}' already exists: pass --overwrite to replace it, "
        'or choose another --file/--dir.'
    )


def _key_files(
    conn: Any,
    record: Mapping[str, Any],
    final: str,
    with_key: bool | None,
    reporter: Reporter,
) -> dict[str, bytes]:
    """The key files of an encrypted volume's image, read before anything
    is downloaded."""
    key_id = record.get(secrets.IMAGE_KEY_ID)
    if not key_id or with_key is False:
        return {}
    reporter.step(f'Reading key {key_id} of image {record["id"]}')
    try:
        return secrets.image_key_files(
            conn, str(key_id), os.path.basename(final)
        )
    except errors.BackupError as exc:
        if with_key:
            raise errors.BackupError(
                f'The key {key_id} of image {record["id"]} cannot be read: '
                f'{exc} Without it the data is useless; nothing was '
                'downloaded.'
            ) from exc
        reporter.warn(
            f'image {record["id"]} holds encrypted (LUKS) data, but its key '
            f'{key_id} cannot be read ({exc}): the set is saved without '
            'it. Save the key with: openstack backup secret save '
            f'{key_id} --file {final}{secrets.KEY_SUFFIX}'
        )
        return {}


def _receive(
    conn: Any,
    record: Mapping[str, Any],
    writer: backup_set.SetWriter,
    expected: transfer.Expected,
    algo: str,
    *,
    resume: bool,
    overwrite: bool,
    keep_partial: bool,
    reporter: Reporter,
    options: TransferOptions,
) -> tuple[transfer.Received, int]:
    """The verified, fsynced data in the partial directory: (what the
    transfer did, the data's size)."""
    fd = writer.open_data(resume=resume)
    try:
        offset = os.fstat(fd).st_size
        if expected.size is not None and offset > expected.size:
            offset = 0
        elif expected.size is None or offset < expected.size:
            # continue on a block boundary, so O_DIRECT stays usable
            offset -= offset % transfer.DIRECT_ALIGN
        if expected.size is not None:
            try:
                backup_set.check_free_space(
                    writer.directory, expected.size - offset
                )
            except errors.InvalidInput:
                if offset == 0:
                    os.close(fd)
                    fd = -1
                    writer.discard()
                raise
        if offset == 0:
            os.ftruncate(fd, 0)
        got = _download(
            conn, record, writer, fd, offset, expected, algo=algo,
            overwrite=overwrite, keep_partial=keep_partial,
            reporter=reporter, options=options,
        )
        return got, os.fstat(fd).st_size
    finally:
        if fd >= 0:
            os.close(fd)


def _download(
    conn: Any,
    record: Mapping[str, Any],
    writer: backup_set.SetWriter,
    fd: int,
    offset: int,
    expected: transfer.Expected,
    *,
    algo: str,
    overwrite: bool,
    keep_partial: bool,
    reporter: Reporter,
    options: TransferOptions,
) -> transfer.Received:
    """Download and verify (one hash: ``algo``), fsync."""
    image_id = str(record['id'])
    cleanup = Cleanup(reporter)  # turns SIGINT/SIGTERM into an exception
    kept = (
        f"The partial download is kept in '{writer.path}'; run the same "
        'command again to resume it.'
    )
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
                _discard(writer, keep_partial, overwrite, reporter)
                raise HashMismatch(
                    f'Image {image_id} did not verify: got {exc.got}, Glance '
                    f'recorded {expected.algorithm} {expected.value}. The '
                    'data is corrupt (in the cloud or on the way); nothing '
                    f"was saved as '{writer.final}'.",
                    got=exc.got,
                ) from None
            reporter.step('Verified; flushing to disk')
            os.fsync(fd)
    except KeyboardInterrupt:
        reporter.note(f'Interrupted. {kept}')
        raise
    except HashMismatch:
        raise
    except errors.BackupError as exc:
        if not isinstance(exc, errors.InvalidInput):
            raise errors.BackupError(f'{exc}\n{kept}') from exc
        raise
    return received


def _seal(
    writer: backup_set.SetWriter,
    manifest: Mapping[str, Any],
    key_files: Mapping[str, bytes],
) -> None:
    """Key files, manifest and, last, the checksum file (which lists them
    all) into the partial directory: from then on the set is complete."""
    data = manifest['data']
    algo = data['hash_algo']
    blob = backup_set.manifest_bytes(manifest)
    lines = backup_set.checksum_line(data['hash_value'], data['file'])
    for name, content in key_files.items():
        writer.put(name, content)
        lines += backup_set.checksum_line(
            hashlib.new(algo, content).hexdigest(), name
        )
    mname = os.path.basename(backup_set.manifest_path(writer.final))
    writer.put(mname, blob)
    lines += backup_set.checksum_line(
        hashlib.new(algo, blob).hexdigest(), mname
    )
    writer.put(data['checksum_file'], lines.encode())


def _publish(
    writer: backup_set.SetWriter,
    algo: str,
    *,
    overwrite: bool,
    reporter: Reporter,
) -> SavedImage:
    """Rename a sealed set into place; what it holds."""
    cpath = backup_set.checksum_path(writer.final, algo)
    cname = os.path.basename(cpath)
    blob = writer.read(cname)
    try:
        listed = backup_set.parse_checksum_file((blob or b'').decode())
    except (ValueError, UnicodeDecodeError):
        listed = {}
    mpath = backup_set.manifest_path(writer.final)
    mname = os.path.basename(mpath)
    if writer.name not in listed or mname not in listed:
        raise errors.BackupError(
            f"'{writer.shown(cname)}' is damaged: remove '{writer.path}' and "
            'run the command again.'
        )
    keys = [n for n in secrets.key_paths(writer.name).values()
            if n in listed]
    members = [
        (writer.part, writer.final),
        *((n, os.path.join(writer.directory, n)) for n in keys),
        (mname, mpath),
        (cname, cpath),
    ]

    def verify(path: str, name: str) -> bool:
        final_name = writer.name if name == writer.part else name
        want = listed.get(final_name)
        return want is not None and backup_set.file_digest(
            path, algo
        ) == want

    manifest_blob = writer.read(mname)
    if manifest_blob is None:  # renamed already: read it in place
        with open(mpath, 'rb') as f:
            manifest_blob = f.read(backup_set.MANIFEST_LIMIT)
    manifest = json.loads(manifest_blob)
    reporter.step(f"Renaming the backup set into place from '{writer.path}'")
    writer.publish(members, overwrite=overwrite, verify=verify)
    data = manifest['data']
    return SavedImage(
        image_id=str(manifest['image']['id']),
        name=manifest['image'].get('name'),
        file=writer.final,
        manifest=mpath,
        checksum_file=cpath,
        size=int(data['size']),
        hash_algo=algo,
        hash_value=str(data['hash_value']),
        verified=data.get('verified_algo') is not None,
        resumed_from=0,
        retries=0,
        duration=0.0,
        throughput=0.0,
        key_files=[os.path.join(writer.directory, n) for n in keys],
    )


def _finish_sealed(
    writer: backup_set.SetWriter,
    algo: str,
    *,
    overwrite: bool,
    image_id: str,
    started: float,
    options: TransferOptions,
    reporter: Reporter,
) -> SavedImage:
    """An earlier run wrote the whole set but was stopped while renaming
    it into place: finish that."""
    saved = _publish(writer, algo, overwrite=overwrite, reporter=reporter)
    if saved.image_id != image_id:
        raise errors.BackupError(  # pragma: no cover - state said so
            f"'{writer.path}' held another image."
        )
    saved.resumed_from = saved.size
    saved.duration = options.clock() - started
    return saved


def _discard(
    writer: backup_set.SetWriter,
    keep_partial: bool,
    overwrite: bool,
    reporter: Reporter,
) -> None:
    """After a mismatch: nothing stays but, if asked, the data as
    ``<file>.unverified``."""
    if keep_partial:
        kept = writer.final + INVALID_SUFFIX
        try:
            writer.publish_one(writer.part, kept, overwrite=overwrite)
        except FileExistsError:
            reporter.note(
                f"'{kept}' exists: the unverified data is not kept (pass "
                '--overwrite to replace it).'
            )
        else:
            reporter.note(f"The unverified data is kept in '{kept}'.")
    writer.discard()
