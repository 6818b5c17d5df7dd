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

"""Volume -> Glance image (the guide's "Volume data backup using Glance
images"), detached and attached.

* ``available``: upload-to-image, wait for the image to be ``active`` and
  the volume to be ``available`` again. The result is ``offline``
  (consistent) data.
* ``in-use``: upload-to-image of an attached volume needs Cinder's
  ``enable_force_upload`` (off on most clouds), so: snapshot (forced only
  below microversion 3.66) -> temporary volume -> upload -> wait ->
  delete the temporaries. The result is crash-consistent.

The record
----------
Cinder copies a volume's image metadata (``volume_image_metadata``: the
properties of the image a volume was created from) into every image
uploaded from it, so the image of a volume that was itself restored from a
backup image arrives with that old backup's ``osc_backup_*`` properties.
Once the image is ``active`` (Glance takes no property update during an
upload), :func:`write_record` writes the complete record of *this* backup
in one JSON patch and removes every other ``osc_backup_*`` key.

The image is uploaded under a temporary name carrying the run tag
(``osc-backup-tmp-<run>-image-of-<volume>``) and gets its final name in
the same patch: an image with the tool's temporary name is an upload that
never got its record, which is how ``openstack backup cleanup`` finds the
image of an interrupted run. If writing the record fails, the complete
image is kept (renamed if at all possible) and the error says so: a good
backup is never deleted for want of its record.

Plain module: takes an openstacksdk ``Connection``; no cliff.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from openstack import exceptions as sdk_exc

from osc_backup.common import backup_set
from osc_backup.common import errors
from osc_backup.common import microversion
from osc_backup.common import records
from osc_backup.common import tags
from osc_backup.common import volumes
from osc_backup.common import waits
from osc_backup.common.cleanup import PARTIAL, Cleanup, shell_command
from osc_backup.common.progress import Reporter
from osc_backup.procedures import image_save
from osc_backup.procedures import secrets

LOG = logging.getLogger(__name__)

METHOD = 'image'

GiB = 1024**3

#: volume status -> consistency of a backup taken in that status
CONSISTENCY = volumes.CONSISTENCY

DISK_FORMATS = ('raw', 'qcow2', 'vmdk', 'vdi', 'vhd', 'vhdx')
CONTAINER_FORMATS = ('bare', 'ovf', 'ova', 'docker', 'compressed')

CRASH_WARNING = (
    "volume {volume} is in-use: the backup is crash-consistent (like "
    "pulling the power cord), not application-consistent. Quiesce or "
    "freeze the filesystem first if you need more."
)


NO_WAIT_NOTE = (
    "--no-wait: image {image} is still being uploaded. It will not carry "
    "osc-backup's record properties (source volume, type, size, "
    "consistency): Glance cannot take property updates during an upload. "
    "Wait for 'active' with 'openstack image show {image}'."
)

#: Content type of a Glance image JSON patch.
JSON_PATCH = 'application/openstack-images-v2.1-json-patch'


class RecordNotWritten(errors.BackupError):
    """The image is complete and kept, but its record could not be
    written."""

    def __init__(self, message: str, *, image_id: str) -> None:
        super().__init__(message)
        self.image_id = image_id


@dataclass
class Options:
    name: str | None = None
    description: str | None = None
    disk_format: str = 'raw'
    container_format: str = 'bare'
    properties: dict[str, str] = field(default_factory=dict)
    wait: bool = True
    timeout: float = 3600.0
    keep_temporary: bool = False
    interval: float | None = waits.DEFAULT_INTERVAL
    #: download the active image into this directory (a backup set)
    download: str | None = None
    #: extra osc_backup_* record keys set by a calling procedure (e.g. the
    #: server a volume is attached to); never from user input
    record: dict[str, str] = field(default_factory=dict)
    #: the caller knows better than the volume status (e.g. the volume of
    #: a stopped server is 'offline' although it is in-use)
    consistency: str | None = None


def preflight(volume: Any, opts: Options) -> str:
    """Check everything we can before creating anything.

    :returns: the consistency label of the backup to be made.
    :raises errors.InvalidInput: with one clear line.
    """
    # the status check always runs; the caller may know the label better
    consistency = volumes.backup_consistency(volume)
    consistency = opts.consistency or consistency
    status = volume.status
    label = volumes.volume_label(volume)
    if opts.disk_format not in DISK_FORMATS:
        raise errors.InvalidInput(
            f"Unsupported disk format '{opts.disk_format}'."
        )
    if opts.container_format not in CONTAINER_FORMATS:
        raise errors.InvalidInput(
            f"Unsupported container format '{opts.container_format}'."
        )
    if volume.is_encrypted and (
        opts.disk_format != 'raw' or opts.container_format != 'bare'
    ):
        raise errors.InvalidInput(
            f"Volume {label} is encrypted: Cinder uploads encrypted volumes "
            "only as --disk-format raw --container-format bare."
        )
    tags.check_not_reserved(opts.properties)
    if status == 'in-use' and not opts.wait:
        raise errors.InvalidInput(
            f"Volume {label} is in-use: --no-wait is not possible, because "
            "the temporary snapshot and volume can only be deleted after "
            "the upload has finished. Run without --no-wait."
        )
    inherited = inherited_record(volume)
    if inherited and not opts.wait:
        raise errors.InvalidInput(
            f"Volume {label} carries the osc-backup record of the image it "
            f"was created from ({', '.join(inherited)}); Cinder copies it "
            'into the new image, and with --no-wait it cannot be replaced '
            "by this backup's record. Run without --no-wait."
        )
    if opts.timeout <= 0:
        raise errors.InvalidInput('--timeout must be a positive number.')
    if opts.download is not None:
        _check_download_dir(volume, opts)
    return consistency


def check_directory(download: str | None) -> str:
    """The --download directory, checked; '.' for an empty value."""
    directory = download or '.'
    if not os.path.isdir(directory):
        raise errors.InvalidInput(
            f"--download: directory '{directory}' does not exist."
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise errors.InvalidInput(
            f"--download: directory '{directory}' is not writable."
        )
    return directory


def _check_download_dir(volume: Any, opts: Options) -> None:
    if not opts.wait:
        raise errors.InvalidInput(
            '--download needs the image to be active: it cannot be '
            'combined with --no-wait.'
        )
    directory = check_directory(opts.download)
    # a raw image is as large as the volume; other formats are smaller
    backup_set.check_free_space(directory, int(volume.size) * GiB)


def base_record(
    method: str, consistency: str, run: tags.Run
) -> dict[str, str]:
    """The record keys every backup artifact carries, whatever its source."""
    return {
        records.TOOL: tags.TOOL,
        records.METHOD: method,
        records.CONSISTENCY: consistency,
        records.RUN_ID: run.run_id,
        records.TOOL_VERSION: tags.tool_version(),
        records.CREATED_AT: run.started.isoformat(timespec='seconds'),
    }


def inherited_record(volume: Any) -> list[str]:
    """The ``osc_backup_*`` keys a volume got from the image it was made
    from (Cinder copies them into every image uploaded from it)."""
    meta = getattr(volume, 'volume_image_metadata', None) or {}
    return sorted(k for k in meta if str(k).startswith(tags.PREFIX))


def record_properties(
    volume: Any, consistency: str, run: tags.Run
) -> dict[str, str]:
    """What a restore and a catalog need, as image properties."""
    return {
        **base_record(METHOD, consistency, run),
        records.SOURCE_VOLUME_ID: volume.id,
        records.SOURCE_VOLUME_NAME: volume.name or '',
        records.VOLUME_TYPE: volume.volume_type or '',
        records.VOLUME_SIZE_GB: str(volume.size),
        records.BOOTABLE: str(bool(volume.is_bootable)).lower(),
        records.ENCRYPTED: str(bool(volume.is_encrypted)).lower(),
    }


def plan(
    conn: Any, volume: Any, opts: Options, run: tags.Run
) -> dict[str, Any]:
    """The steps and API calls a real run would make; changes nothing."""
    consistency = preflight(volume, opts)
    name = opts.name or run.default_name(volume.name or volume.id)
    upload_name = _upload_name(volume, name, opts, run)
    fmt = f'{opts.disk_format}/{opts.container_format}'
    record_step = (
        f'PATCH /v2/images/<image> name={name}, {tags.PREFIX}* record '
        f'properties (other {tags.PREFIX}* keys removed)'
    )
    steps: list[str] = []
    if volume.status == 'in-use':
        version = microversion.snapshot_microversion(conn.block_storage)
        force = microversion.snapshot_needs_force(version, volume.status)
        steps += [
            f'POST /snapshots volume_id={volume.id} '
            f'{"force=true" if force else "without force"} '
            f'(microversion {version or microversion.BASE_MICROVERSION})'
            ' -> wait available',
            f'POST /volumes snapshot_id=<snapshot> size={volume.size} '
            '-> wait available',
            'DELETE /snapshots/<snapshot> (not waited for: the deletion '
            'runs during the upload)',
            f'POST /volumes/<temporary volume>/action os-volume_upload_image '
            f'image_name={upload_name} {fmt}',
            'wait image active; wait temporary volume available',
            record_step,
            'DELETE /volumes/<temporary volume> -> wait gone',
            'wait until snapshot <snapshot> is gone (deleted again if the '
            'driver refused while the volume existed)',
        ]
    else:
        steps += [
            f'POST /volumes/{volume.id}/action os-volume_upload_image '
            f'image_name={upload_name} {fmt}',
        ]
        if opts.wait:
            steps += ['wait image active; wait volume available', record_step]
    if opts.download is not None:
        steps.append(
            f'GET /v2/images/<image>/file -> backup set in {opts.download} '
            '(verified against os_hash_value, fsynced, renamed)'
        )
        if volume.is_encrypted:
            steps.append(
                f'GET /v1/secrets/<image {secrets.IMAGE_KEY_ID}>/payload '
                '-> <file>.key, <file>.key.luks-passphrase, '
                '<file>.key.metadata.json (mode 0600)'
            )
    return {
        'dry_run': True,
        'method': METHOD,
        'source_volume_id': volume.id,
        'source_volume_name': volume.name,
        'source_volume_status': volume.status,
        'consistency': consistency,
        'name': name,
        'steps': steps,
    }


def _upload(
    conn: Any,
    upload_from: Any,
    name: str,
    opts: Options,
    cleanup: Cleanup,
    reporter: Reporter,
) -> Any:
    """Request the upload and register the image's removal on failure.

    Returns the new (``queued``) image.
    """
    reporter.step(f'Uploading volume {upload_from.id} to image {name}')
    with cleanup.creating():
        response = conn.block_storage.upload_volume_to_image(
            upload_from,
            name,
            force=False,
            disk_format=opts.disk_format,
            container_format=opts.container_format,
        )
        image_id: str = response['image_id']
        cleanup.remove_image_on_failure(conn.image, image_id)
    return conn.image.get_image(image_id)


def _upload_name(
    volume: Any, name: str, opts: Options, run: tags.Run
) -> str:
    """The name the image is uploaded under: the run's temporary name
    until the record is written (see the module docstring); the final
    name with --no-wait, which never writes a record."""
    if not opts.wait:
        return name
    return run.temporary_name('image', volume.name or volume.id)


def image_properties(image: Any) -> dict[str, Any]:
    """The image's extra properties (where openstacksdk keeps the keys it
    does not know, e.g. every ``osc_backup_*``)."""
    return dict(getattr(image, 'properties', None) or {})


def write_record(
    conn: Any, image: Any, record: dict[str, str], *, name: str
) -> Any:
    """Make ``record`` the image's whole ``osc_backup_*`` record and
    ``name`` its name, in one JSON patch; return the updated image.

    Every ``osc_backup_*`` key that is not in ``record`` is removed: an
    image uploaded from a volume gets the volume's image metadata, i.e.
    the record of the backup that volume was restored from. The patch is
    sent as such because openstacksdk's ``update_image`` cannot remove
    properties (given the fetched image, openstacksdk 4.18 also computes a
    patch that removes 'stores', which Glance refuses with 409).

    :param image: the image as Glance showed it last (active).
    """
    stale = sorted(
        k for k in image_properties(image)
        if k.startswith(tags.PREFIX) and k not in record
    )
    patch: list[dict[str, Any]] = [
        {'op': 'remove', 'path': f'/{k}'} for k in stale
    ]
    # 'add' sets a key whether it exists or not (Glance's v2.1 patch)
    patch += [
        {'op': 'add', 'path': f'/{k}', 'value': v}
        for k, v in record.items()
    ]
    if image.name != name:
        patch.append({'op': 'replace', 'path': '/name', 'value': name})
    response = conn.image.patch(
        f'/images/{image.id}',
        data=json.dumps(patch),
        headers={'Content-Type': JSON_PATCH},
    )
    sdk_exc.raise_from_response(response)
    return conn.image.get_image(image.id)


def record_of(
    volume: Any, opts: Options, consistency: str, run: tags.Run
) -> dict[str, Any]:
    """Everything the image of ``volume`` is given once it is active: the
    record, the caller's record keys, the user's properties."""
    props: dict[str, Any] = record_properties(volume, consistency, run)
    props.update(opts.record)
    props.update(opts.properties)
    if opts.description:
        props['description'] = opts.description
    return props


def finish_image(
    conn: Any, image: Any, record: dict[str, Any], *, name: str, what: str
) -> tuple[Any, RecordNotWritten | None]:
    """Write ``record`` and the final ``name`` onto a complete (active)
    image (:func:`write_record`); the image, and the error to raise once
    the run's temporaries are gone, if that failed.

    Only once the image is ``active``: a property update while Glance is
    still receiving the data races with the upload's own status change
    (Glance answers the upload with 410 Gone and Cinder deletes the image).
    If the record cannot be written, the image is kept (a complete backup
    is never deleted for want of its record) and at least renamed, so that
    ``backup cleanup`` does not take it for the upload of a killed run.

    :param what: what the image is a backup of, for the error message.
    """
    try:
        return write_record(conn, image, record, name=name), None
    except Exception as failure:
        LOG.debug('Writing the record failed', exc_info=True)
        reason = f'{failure.__class__.__name__}: {failure}'
        if isinstance(failure, sdk_exc.HttpException):
            reason = str(failure.details or failure)
    image_id = image.id
    try:
        image = conn.image.update_image(image_id, name=name)
        renamed = f"It is named '{name}'."
    except Exception as exc:
        LOG.debug('Renaming image %s failed', image_id, exc_info=True)
        renamed = (
            f"It still has its temporary name '{image.name}' (renaming it "
            f"failed too: {exc}), which 'openstack backup cleanup' removes: "
            f'keep it with: openstack image set --name {shlex.quote(name)} '
            f'{image_id}'
        )
    return image, RecordNotWritten(
        f'The backup image {image_id} of {what} is active, complete and '
        'kept, but its record (source, type, size, consistency) could not '
        f'be written: {reason}. {renamed} A restore from it needs --type; '
        'the size comes from the image.',
        image_id=image_id,
    )


def backup_volume_via_image(
    conn: Any,
    volume: Any,
    opts: Options,
    *,
    run: tags.Run,
    reporter: Reporter,
    method_reason: str = 'requested with --via-image',
    snapshot: Any = None,
) -> dict[str, Any]:
    """Back up ``volume`` to a Glance image. See the module docstring.

    :param snapshot: an ``available`` snapshot of ``volume`` the caller
        took (e.g. Nova, for all the disks of a server at once) and whose
        deletion the caller has registered: the image is made from a
        temporary volume of it, whatever the volume's status. Its deletion
        is requested once that volume exists, as for our own snapshot.
    :raises RecordNotWritten: the image is complete and kept, but its
        record could not be written.
    """
    consistency = preflight(volume, opts)
    bs = conn.block_storage
    started = time.monotonic()
    deadline = waits.Deadline(opts.timeout)
    name = opts.name or run.default_name(volume.name or volume.id)
    upload_name = _upload_name(volume, name, opts, run)
    label = volumes.volume_label(volume)
    if consistency == volumes.CRASH_CONSISTENT:
        reporter.warn(CRASH_WARNING.format(volume=label))
    if volume.is_encrypted:
        reporter.note(
            f'Volume {label} is encrypted: the image holds raw LUKS data '
            'and is useless without its key. Cinder stores a copy of the key '
            'in Barbican; the image property cinder_encryption_key_id names '
            'it.'
            + (' The key is saved with the download.'
               if opts.download is not None else ' Back that secret up too.')
        )

    cleanup = Cleanup(
        reporter, keep_temporary=opts.keep_temporary, run_id=run.run_id
    )
    with cleanup.guard():
        if snapshot is not None or volume.status == 'in-use':
            snap = snapshot
            if snap is None:
                reporter.step(f'Creating temporary snapshot of {label}')
                snap = volumes.create_temporary_snapshot(
                    bs, volume, run=run, cleanup=cleanup, timeout=deadline,
                    interval=opts.interval,
                )
            reporter.step(f'Creating temporary volume from snapshot {snap.id}')
            upload_from = volumes.create_temporary_volume(
                bs, snap, volume, run=run, cleanup=cleanup, timeout=deadline,
                interval=opts.interval,
            )
            if not opts.keep_temporary:
                # its deletion runs during the upload; the undo waits
                volumes.release_snapshot(bs, snap)
        else:
            upload_from = volume
            cleanup.add(
                f'wait for volume {volume.id} to leave uploading',
                lambda: _settle_source(bs, volume.id, opts.interval),
                leftover=f'volume {volume.id} (busy uploading)',
                remove_command=(
                    f'openstack volume show {volume.id}  '
                    '# wait until it is available again'
                ),
                when=PARTIAL,
            )
        image = _upload(
            conn, upload_from, upload_name, opts, cleanup, reporter
        )
        image_id = image.id
        not_recorded: RecordNotWritten | None = None
        if opts.wait:
            reporter.step(f'Waiting for image {image_id} to become active')
            image = waits.wait_for_status(
                conn.image, image, 'active', kind='image',
                step='upload volume to image', timeout=deadline,
                interval=opts.interval,
            )
            reporter.step(
                f'Waiting for volume {upload_from.id} to be available again'
            )
            waits.wait_for_status(
                bs, upload_from, 'available', kind='volume',
                step='wait for the uploaded volume to be released',
                timeout=deadline, interval=opts.interval,
            )
            reporter.step(f'Writing the record of image {image_id}')
            # a failure keeps the image: the run goes on (the image's
            # removal is undone only on failure) and raises it afterwards
            image, not_recorded = finish_image(
                conn, image, record_of(volume, opts, consistency, run),
                name=name, what=f'volume {label}',
            )
        else:
            reporter.note(NO_WAIT_NOTE.format(image=image_id))
        cleanup.outcome = f'image {image_id} is {image.status}'
    if not_recorded is not None:
        raise not_recorded

    result = {
        'image_id': image.id,
        'name': image.name,
        'status': image.status,
        'size': image.size,
        'disk_format': image.disk_format,
        'container_format': image.container_format,
        'checksum': image.checksum,
        'os_hash_algo': image.hash_algo,
        'os_hash_value': image.hash_value,
        'source_volume_id': volume.id,
        'source_volume_name': volume.name,
        'method': METHOD,
        'consistency': consistency,
        'encrypted': bool(volume.is_encrypted),
        'encryption_key_id': None,
        'method_reason': method_reason,
        'run_id': run.run_id,
        'duration': round(time.monotonic() - started, 1),
        'files': [],
    }
    key_id = image_key_id(image) if volume.is_encrypted else None
    result['encryption_key_id'] = key_id
    if volume.is_encrypted and opts.wait and key_id is None:
        reporter.warn(
            f'image {image.id} of encrypted volume {label} has no '
            f'{secrets.IMAGE_KEY_ID} property: its key cannot be found.'
        )
    if opts.download is not None:
        # Outside the cleanup guard: the image is a complete backup now; a
        # failed download must not delete it.
        files = download_image(
            conn, image.id, opts.download, reporter, with_key=bool(key_id)
        )
        if key_id:
            _note_saved_key(key_id, files[0], reporter)
        result['files'] = files
        result['duration'] = round(time.monotonic() - started, 1)
    elif key_id:
        reporter.note(
            f'Image {image.id} is useless without its key, Barbican secret '
            f'{key_id} (a copy Cinder made of the volume key; it is deleted '
            'with the image). Save its LUKS passphrase with: openstack '
            f'backup secret save {key_id} --luks-passphrase --file <path> '
            '(and the key itself without --luks-passphrase), or use '
            '--download <directory>, which saves it with the image.'
        )
    return result


def image_key_id(image: Any) -> str | None:
    """The Barbican key ID Cinder set on an encrypted volume's image."""
    props = dict(getattr(image, 'properties', None) or {})
    value = props.get(secrets.IMAGE_KEY_ID)
    if value is None:
        value = getattr(image, secrets.IMAGE_KEY_ID, None)
    return str(value) if value else None


def _note_saved_key(key_id: str, data_file: str, reporter: Reporter) -> None:
    """The key was saved in the set (0600 files): say where."""
    reporter.note(
        f'Saved key {key_id} with the image (mode 0600): '
        f'{data_file}{secrets.KEY_SUFFIX} (the key) and '
        f'{data_file}{secrets.PASSPHRASE_SUFFIX} (the LUKS passphrase, '
        "for 'cryptsetup open --key-file'). Keep them as safe as the data."
    )


def download_image(
    conn: Any, image_id: str, directory: str, reporter: Reporter,
    *, with_key: bool | None = None,
) -> list[str]:
    """Save the image as a backup set (with its key when ``with_key``);
    the one download path."""
    reporter.step(f'Downloading image {image_id} into {directory}')
    resume = shell_command(
        'openstack', 'backup', 'image', 'save', '--dir', directory, image_id
    )
    try:
        saved = image_save.save_image(
            conn, image_id, directory, with_key=with_key, reporter=reporter
        )
    except errors.BackupError as exc:
        raise errors.BackupError(
            f'The backup image {image_id} is active and complete, but the '
            f'download failed: {exc} Resume it with: {resume}'
        ) from exc
    except KeyboardInterrupt as exc:
        # the image is a complete backup, kept: name it (the row of
        # ``backup run`` lists it) and how to finish the download
        kept = (
            f'The backup image {image_id} is active and complete (kept), '
            f'but its download was interrupted. Resume it with: {resume}'
        )
        reporter.note(kept)
        raise errors.keeping(exc, [image_id], kept) from exc
    return saved.files


def _settle_source(
    bs: Any, volume_id: str, interval: float | None
) -> None:
    """After a failed upload, wait until Cinder has released the source.

    The direct path uploads only ``available`` volumes, so that is the
    status to wait for (not the status of the object in hand: the waits of
    the run refresh it, and it may say 'uploading' by now).
    """
    try:
        current = bs.get_volume(volume_id)
    except sdk_exc.NotFoundException:
        return
    if current.status == 'uploading':
        waits.wait_for_status(
            bs, current, 'available', kind='volume',
            step='wait for the source volume to be released',
            timeout=volumes.CLEANUP_TIMEOUT, interval=interval,
        )
