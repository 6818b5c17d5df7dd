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

"""Cinder backup or backup image -> volume.

From a Cinder backup, into a new volume: we always create the target
volume ourselves (recorded type and size, or ``--type``; ``--name``,
``--availability-zone``), wait until it is ``available``, and restore onto
it. Cinder's own "restore into a new volume" creates a volume of the
*default* type in the default zone (the API takes only ``name``), which
loses the recorded type, and fails (``error_restoring``) for an encrypted
volume type that is not the default; the errata's workaround, an empty
volume of exactly that type and size, is what we do every time. It also
means a failed restore leaves nothing: the volume is ours and is deleted
(Cinder's auto-created volume would be left behind when no backup service
answers).

From an image made by ``--via-image``: a volume is created from the image
with the recorded type, size and bootable flag (image properties
``osc_backup_volume_type``, ``osc_backup_volume_size_gb``,
``osc_backup_bootable``).

A new volume is created under the run's temporary name
(``osc-backup-tmp-<run>-restore-of-<source>``, metadata
``osc_backup_temporary=true``) and gets its final name and metadata once
the restore is complete (with ``--no-wait``: once Cinder has accepted the
request), so ``openstack backup cleanup`` finds the target of a run that
was killed. ``--no-wait`` returns before the data is there, so the recorded
bootable flag is not set then: the output says how to set it.

Onto an existing volume only with ``--volume V --force`` and only when V is
``available``: a backup is restored onto it, an image is written with
Cinder's re-image action (microversion 3.68).

Plain module: takes an openstacksdk ``Connection``; no cliff.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from openstack import exceptions as sdk_exc

from osc_backup.common import errors
from osc_backup.common import records
from osc_backup.common import tags
from osc_backup.common import volumes
from osc_backup.common import waits
from osc_backup.common.cleanup import PARTIAL, Cleanup
from osc_backup.common.progress import Reporter
from osc_backup.procedures import volume_backup
from osc_backup.procedures import volume_image

LOG = logging.getLogger(__name__)

BACKUP = 'backup'
IMAGE = 'image'

MV_REIMAGE = '3.68'


VOLUME_FAILURES = ['error', 'error_restoring', 'error_extending', 'deleted']


@dataclass
class Source:
    kind: str  # BACKUP or IMAGE
    resource: Any

    @property
    def record(self) -> dict[str, str]:
        """The osc_backup_* record: backup metadata or image properties."""
        if self.kind == BACKUP:
            data = dict(self.resource.metadata or {})
        else:
            data = dict(self.resource.properties or {})
        return {
            k: str(v) for k, v in data.items() if k.startswith(tags.PREFIX)
        }


@dataclass
class Options:
    name: str | None = None
    description: str | None = None
    volume_type: str | None = None
    availability_zone: str | None = None
    #: name or ID of an existing volume to overwrite (needs force)
    volume: str | None = None
    force: bool = False
    wait: bool = True
    timeout: float = 3600.0
    interval: float | None = waits.DEFAULT_INTERVAL
    #: False: a new volume keeps its temporary name and mark; the caller
    #: gives it ``final_name`` and ``metadata`` of the result with
    #: :func:`finish_new_volume` once its own run is complete
    rename: bool = True


def find_source(conn: Any, name_or_id: str) -> Source:
    """A Cinder backup or a Glance image, by name or ID; one clear error
    when it is neither, or both."""
    found: list[Source] = []
    for kind, finder in (
        (BACKUP, conn.block_storage.find_backup),
        (IMAGE, conn.image.find_image),
    ):
        try:
            res = finder(name_or_id, ignore_missing=True)
        except sdk_exc.DuplicateResource:
            raise errors.InvalidInput(
                f"More than one {kind} is named '{name_or_id}': use its ID."
            ) from None
        if res is not None:
            found.append(Source(kind, res))
    if not found:
        raise errors.InvalidInput(
            f"No backup or image with name or ID '{name_or_id}' found."
        )
    if len(found) > 1:
        raise errors.InvalidInput(
            f"'{name_or_id}' names both backup {found[0].resource.id} and "
            f"image {found[1].resource.id}: use the ID."
        )
    return found[0]


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, '') else None
    except ValueError:
        return None


def _bool(value: str | None) -> bool | None:
    if value is None or value == '':
        return None
    return value.strip().lower() in ('true', '1', 'yes')


@dataclass
class Plan:
    source: Source
    size: int
    volume_type: str | None
    bootable: bool | None
    target: Any | None  # existing volume, or None for a new one
    name: str


def prepare(
    conn: Any, source: Source, opts: Options, run: tags.Run
) -> Plan:
    """All checks, before anything is created."""
    bs = conn.block_storage
    res = source.resource
    record = source.record
    if opts.volume and not opts.force:
        raise errors.InvalidInput(
            f"Restoring onto existing volume '{opts.volume}' overwrites all "
            'its data: add --force to confirm.'
        )
    if opts.force and not opts.volume:
        raise errors.InvalidInput(
            '--force only applies to --volume (restoring onto an existing '
            'volume); a new volume needs no --force.'
        )
    if opts.volume and (
        opts.name or opts.volume_type or opts.availability_zone
        or opts.description
    ):
        raise errors.InvalidInput(
            '--name, --description, --type and --availability-zone '
            'describe a new volume; they cannot be used with --volume.'
        )
    if opts.timeout <= 0:
        raise errors.InvalidInput('--timeout must be a positive number.')

    if source.kind == BACKUP:
        if res.status != 'available':
            raise errors.InvalidInput(
                f"Backup {res.id} is '{res.status}': only an 'available' "
                'backup can be restored.'
            )
        size = int(res.size or _int(record.get(volume_backup.KEY_SIZE)) or 0)
    else:
        if res.status != 'active':
            raise errors.InvalidInput(
                f"Image {res.id} is '{res.status}': only an 'active' image "
                'can be restored.'
            )
        gib = 1024**3
        from_bytes = -(-int(res.size or 0) // gib)
        size = max(
            _int(record.get(records.VOLUME_SIZE_GB)) or 0,
            int(getattr(res, 'min_disk', 0) or 0),
            from_bytes,
        )
    if size <= 0:
        raise errors.InvalidInput(
            f'Cannot tell the size of {source.kind} {res.id}.'
        )
    bootable = _bool(record.get(records.BOOTABLE))
    source_name = record.get(records.SOURCE_VOLUME_NAME) or (
        res.name or res.id
    )

    target = None
    volume_type = None
    if opts.volume:
        target = volumes.find_volume(bs, opts.volume)
        label = volumes.volume_label(target)
        if target.status != 'available':
            raise errors.InvalidInput(
                f"Volume {label} is '{target.status}': a restore can only "
                "overwrite an 'available' (detached) volume."
            )
        if int(target.size or 0) < size:
            raise errors.InvalidInput(
                f'Volume {label} has {target.size} GiB; the {source.kind} '
                f'needs {size} GiB.'
            )
        if source.kind == IMAGE and not volume_backup.supports(
            bs, MV_REIMAGE
        ):
            raise errors.InvalidInput(
                'Writing an image onto an existing volume needs Cinder\'s '
                f're-image action (microversion {MV_REIMAGE}), which this '
                'cloud does not offer: restore into a new volume instead.'
            )
        name = target.name or target.id
    else:
        volume_type = opts.volume_type or (
            record.get(records.VOLUME_TYPE) or None
        )
        if volume_type:
            try:
                bs.find_type(volume_type, ignore_missing=False)
            except sdk_exc.NotFoundException:
                given = 'given' if opts.volume_type else 'recorded'
                raise errors.InvalidInput(
                    f"The {given} volume type '{volume_type}' does not exist "
                    'in this cloud: pass --type with one that does.'
                ) from None
            except sdk_exc.DuplicateResource:
                raise errors.InvalidInput(
                    f"More than one volume type is named '{volume_type}'."
                ) from None
        name = opts.name or (
            f'{source_name}-restore-{tags.utc_stamp(run.started)}'
            f'-{run.run_id[:6]}'
        )
    if source.kind == IMAGE and image_key_id(res):
        _check_encrypted_type(bs, res, volume_type, target)
    return Plan(source, size, volume_type, bootable, target, name)


def image_key_id(image: Any) -> str | None:
    return volume_image.image_key_id(image)


def _check_encrypted_type(
    bs: Any, image: Any, volume_type: str | None, target: Any | None
) -> None:
    """An image of an encrypted volume (LUKS data and a key) must go to
    a volume of an encrypted type: one clear error before anything is
    created. Skipped where the user may not read type encryption."""
    if target is not None:
        volume_type = target.volume_type
    if not volume_type:
        raise errors.InvalidInput(
            f'Image {image.id} holds an encrypted volume (LUKS data, key '
            f'{image_key_id(image)}): pass --type with an encrypted volume '
            'type (no type was recorded with the backup).'
        )
    try:
        vtype = bs.find_type(volume_type, ignore_missing=False)
        enc = bs.get_type_encryption(vtype.id)
    except sdk_exc.ForbiddenException:
        return
    except sdk_exc.NotFoundException:
        enc = None
    except sdk_exc.HttpException as exc:  # cannot tell: Cinder decides
        LOG.debug('Reading type encryption failed: %s', exc)
        return
    if enc is None or not (
        getattr(enc, 'provider', None) or getattr(enc, 'encryption_id', None)
    ):
        raise errors.InvalidInput(
            f'Image {image.id} holds an encrypted volume (LUKS data, key '
            f"{image_key_id(image)}), but volume type '{volume_type}' is "
            'not encrypted: pass --type with an encrypted volume type (the '
            'one recorded with the backup, if it exists here).'
        )


def _new_volume(
    conn: Any,
    plan: Plan,
    opts: Options,
    run: tags.Run,
    cleanup: Cleanup,
    **extra: Any,
) -> Any:
    bs = conn.block_storage
    res = plan.source.resource
    attrs: dict[str, Any] = {
        'size': plan.size,
        'name': run.temporary_name(tags.RESTORE_ROLE, plan.name),
        'description': opts.description
        or f'Restored by osc-backup from {plan.source.kind} {res.id}',
        'metadata': {
            **_target_metadata(plan, run),
            records.TEMPORARY: 'true',
        },
    }
    if plan.volume_type:
        attrs['volume_type'] = plan.volume_type
    if opts.availability_zone:
        attrs['availability_zone'] = opts.availability_zone
    attrs.update(extra)
    with cleanup.creating():
        vol = bs.create_volume(**attrs)
        cleanup.add(
            f'delete incomplete volume {vol.id}',
            lambda: volumes.delete_volume(
                bs, vol.id, step='delete incomplete restore target',
                interval=opts.interval,
            ),
            leftover=f'volume {vol.id}',
            remove_command=['openstack', 'volume', 'delete', vol.id],
            when=PARTIAL,
        )
    return vol


def _target_metadata(plan: Plan, run: tags.Run) -> dict[str, str]:
    res = plan.source.resource
    return {
        records.TOOL: tags.TOOL,
        records.RUN_ID: run.run_id,
        records.RESTORED_FROM: f'{plan.source.kind}:{res.id}',
    }


def finish_new_volume(
    bs: Any, volume: Any, name: str, metadata: dict[str, str]
) -> Any:
    """The restore of a new volume (the volume, or its ID) is complete
    (or, with --no-wait, in Cinder's hands): its final name, its metadata
    re-set (Cinder's backup restore replaces a volume's metadata with the
    backed-up volume's), and no temporary mark."""
    # By ID: given the volume in hand, openstacksdk (4.18) pops the key
    # from its local copy after the call and fails with KeyError when that
    # copy lacks it.
    volume_id = getattr(volume, 'id', volume)
    try:
        bs.delete_volume_metadata(volume_id, keys=[records.TEMPORARY])
    except sdk_exc.NotFoundException:
        pass  # Cinder's restore replaced the metadata already
    bs.set_volume_metadata(volume_id, **metadata)
    return bs.update_volume(volume, name=name)


def _keep_temporary(bs: Any, vol: Any, plan: Plan, run: tags.Run) -> Any:
    """A restored volume the caller finishes later: the temporary mark
    and this run's metadata set again (Cinder's backup restore replaced
    them with the backed-up volume's, which may name another run)."""
    bs.set_volume_metadata(vol.id, **{
        **_target_metadata(plan, run), records.TEMPORARY: 'true',
    })
    return bs.get_volume(vol.id)


def _set_bootable(
    bs: Any, vol: Any, plan: Plan, opts: Options, reporter: Reporter
) -> Any:
    """Give the volume the recorded bootable flag once it is available.

    With --no-wait the data is still arriving, so the flag is not touched
    (Cinder itself marks a volume written from an image bootable when it
    is done); when it will then differ from the record, say how to set it.
    """
    if plan.bootable is None:
        return vol
    if not opts.wait:
        cinder_sets = (
            True if plan.source.kind == IMAGE else bool(vol.is_bootable)
        )
        if cinder_sets != plan.bootable:
            flag = '--bootable' if plan.bootable else '--non-bootable'
            reporter.note(
                f'--no-wait: volume {vol.id} is still being restored, so '
                'its recorded bootable flag '
                f'({str(plan.bootable).lower()}) is not set; once it is '
                f'available: openstack volume set {flag} {vol.id}'
            )
        return vol
    if vol.status != 'available' or bool(vol.is_bootable) == plan.bootable:
        return vol
    bs.set_volume_bootable_status(vol, plan.bootable)
    return bs.get_volume(vol.id)


def restore(
    conn: Any,
    source: Source,
    opts: Options,
    *,
    run: tags.Run,
    reporter: Reporter,
) -> dict[str, Any]:
    """Restore ``source`` into a volume; see the module docstring."""
    plan = prepare(conn, source, opts, run)
    bs = conn.block_storage
    res = source.resource
    started = time.monotonic()
    deadline = waits.Deadline(opts.timeout)
    cleanup = Cleanup(reporter, run_id=run.run_id)
    how: str
    with cleanup.guard():
        if source.kind == BACKUP:
            if plan.target is None:
                reporter.step(
                    f'Creating empty volume {plan.name} ({plan.size} GiB, '
                    f'type {plan.volume_type or "default"})'
                )
                vol = _new_volume(conn, plan, opts, run, cleanup)
                vol = waits.wait_for_status(
                    bs, vol, 'available', kind='volume',
                    step='create the restore target volume',
                    timeout=deadline, interval=opts.interval,
                )
                how = 'backup restored onto a new volume'
            else:
                vol = plan.target
                how = 'backup restored onto existing volume (--force)'
            reporter.step(f'Restoring backup {res.id} onto volume {vol.id}')
            try:
                # positional: the keyword is volume_id up to openstacksdk
                # 4.13 and volume from 4.14 on
                bs.restore_backup(res, vol.id)
            except sdk_exc.HttpException as exc:
                raise errors.BackupError(
                    f'Cinder refused to restore backup {res.id} onto volume '
                    f'{vol.id}: {exc.details or exc}'
                ) from exc
            if opts.wait:
                vol = waits.wait_for_status(
                    bs, vol, 'available', kind='volume',
                    step='restore backup', timeout=deadline,
                    interval=opts.interval, failures=VOLUME_FAILURES,
                )
                waits.wait_for_status(
                    bs, res, 'available', kind='backup',
                    step='wait for the backup to be released',
                    timeout=deadline, interval=opts.interval,
                )
        elif plan.target is None:
            reporter.step(f'Creating volume {plan.name} from image {res.id}')
            vol = _new_volume(
                conn, plan, opts, run, cleanup, image_id=res.id
            )
            how = 'new volume created from the image'
            if opts.wait:
                vol = waits.wait_for_status(
                    bs, vol, 'available', kind='volume',
                    step='create volume from image', timeout=deadline,
                    interval=opts.interval, failures=VOLUME_FAILURES,
                )
        else:
            vol = plan.target
            how = 'image written onto existing volume (--force, re-image)'
            reporter.step(f'Re-imaging volume {vol.id} from image {res.id}')
            response = bs.post(
                f'/volumes/{vol.id}/action',
                json={
                    'os-reimage': {
                        'image_id': res.id,
                        'reimage_reserved': False,
                    }
                },
                microversion=MV_REIMAGE,
            )
            sdk_exc.raise_from_response(response)
            if opts.wait:
                vol = waits.wait_for_status(
                    bs, vol, 'available', kind='volume',
                    step='re-image volume', timeout=deadline,
                    interval=opts.interval, failures=VOLUME_FAILURES,
                )
        vol = _set_bootable(bs, vol, plan, opts, reporter)
        if plan.target is None and opts.rename:
            vol = finish_new_volume(
                bs, vol, plan.name, _target_metadata(plan, run)
            )
        elif plan.target is None:
            vol = _keep_temporary(bs, vol, plan, run)
        cleanup.outcome = f'volume {vol.id} is {vol.status}'

    key_id = _note_key(bs, vol, source, reporter)
    record = source.record
    return {
        'volume_id': vol.id,
        'name': vol.name,
        'status': vol.status,
        'size': vol.size,
        'volume_type': vol.volume_type,
        'bootable': bool(vol.is_bootable),
        'availability_zone': vol.availability_zone,
        'source_kind': source.kind,
        'source_id': res.id,
        'source_name': res.name,
        'source_volume_id': record.get(records.SOURCE_VOLUME_ID),
        'restore_method': how,
        'encryption_key_id': key_id,
        'run_id': run.run_id,
        'duration': round(time.monotonic() - started, 1),
        # what finish_new_volume gives it (Options.rename=False)
        'final_name': plan.name,
        'metadata': _target_metadata(plan, run),
    }


def _note_key(
    bs: Any, vol: Any, source: Source, reporter: Reporter
) -> str | None:
    """Say which key an encrypted restored volume has (Cinder copies
    the source's key: a new secret ID)."""
    if not vol.is_encrypted:
        return None
    key_id = getattr(vol, 'encryption_key_id', None)
    if not key_id:
        try:
            key_id = getattr(bs.get_volume(vol.id), 'encryption_key_id', None)
        except sdk_exc.HttpException:
            key_id = None
    res = source.resource
    if source.kind == IMAGE:
        old = image_key_id(res)
        what = f'image key {old}' if old else 'the image key'
    else:
        old = getattr(res, 'encryption_key_id', None)
        what = f'backup key {old}' if old else 'the backup key'
    if key_id:
        reporter.note(
            f'Volume {vol.id} is encrypted; Cinder gave it its own copy of '
            f'{what}: secret {key_id} (a new ID).'
        )
    return str(key_id) if key_id else None
