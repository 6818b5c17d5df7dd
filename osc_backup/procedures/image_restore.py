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

"""``backup image restore``: a backup set back into Glance.

The recorded formats and properties are restored (those Glance owns are
left out); the data is checked against its manifest while it is uploaded
and the hash Glance computes against the recorded one. The key of an
encrypted volume's image is stored again in Barbican and the image
re-linked to it. The set format itself is
:mod:`osc_backup.common.backup_set`.

Plain module: takes an openstacksdk ``Connection``; no cliff.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from osc_backup.common import backup_set
from osc_backup.common import errors
from osc_backup.common import tags
from osc_backup.common import waits
from osc_backup.common.cleanup import PARTIAL, Cleanup
from osc_backup.common.progress import NullReporter, Reporter
from osc_backup.procedures import secrets

#: Image attributes Glance owns or computes: never sent back on restore.
GLANCE_OWNED = frozenset(
    {
        'id',
        'status',
        'checksum',
        'os_hash_algo',
        'os_hash_value',
        'size',
        'virtual_size',
        'owner',
        'created_at',
        'updated_at',
        'deleted',
        'deleted_at',
        'locations',
        'location',
        'file',
        'schema',
        'self',
        'direct_url',
        'stores',
        'protected',  # set after the upload is verified, see restore
        'visibility',  # handled separately, see _create_body
    }
)
GLANCE_OWNED_PREFIXES = ('os_glance_',)

UPLOAD_BLOCK = 4 * 1024 * 1024

@dataclass
class RestoredImage:
    image_id: str
    name: str
    status: str
    size: int
    disk_format: str | None
    container_format: str | None
    os_hash_algo: str | None
    os_hash_value: str | None
    checksum: str | None
    verified: str
    source_image_id: str | None
    manifest: str
    duration: float
    #: the Barbican key of an encrypted volume's image: re-stored with a
    #: new ID (the recorded one is ``previous_encryption_key_id``)
    encryption_key_id: str | None = None
    previous_encryption_key_id: str | None = None
    #: the name it gets (``restore_image(rename=False)``: not yet given)
    final_name: str = ''
    #: the recorded image was protected (so is this one, once finished)
    protect: bool = False


def create_body(
    manifest: Mapping[str, Any],
    *,
    name: str | None = None,
    properties: Mapping[str, str] | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """The ``POST /v2/images`` body: the recorded image minus what Glance
    owns, with ``name`` and ``properties`` overriding."""
    record = manifest.get('glance_record') or {}
    body = {
        k: v
        for k, v in record.items()
        if k not in GLANCE_OWNED
        and not k.startswith(GLANCE_OWNED_PREFIXES)
        and v is not None
    }
    visibility = record.get('visibility')
    if visibility in ('private', 'shared'):
        body['visibility'] = visibility
    elif visibility and reporter is not None:
        reporter.note(
            f"The saved image was '{visibility}'; the restored image gets "
            "the cloud's default visibility (set it with 'openstack image "
            "set' if you are allowed to)."
        )
    if name:
        body['name'] = name
    body.update(properties or {})
    return body


def _chunks(
    path: str, hashers: list[Any], block: int = UPLOAD_BLOCK
) -> Iterator[bytes]:
    with open(path, 'rb', buffering=0) as f:
        while True:
            chunk = f.read(block)
            if not chunk:
                return
            for h in hashers:
                h.update(chunk)
            yield chunk



@dataclass
class CheckedSet:
    """A backup set checked before anything is created (:func:`check_set`):
    valid, its data as recorded, and the key its image needs at hand."""

    backup_set: backup_set.BackupSet
    key: _Key | None
    properties: dict[str, str]


def check_set(
    conn: Any,
    source: str,
    *,
    properties: Mapping[str, str] | None = None,
    reporter: Reporter | None = None,
) -> CheckedSet:
    """Validate the set at ``source`` and hash its data against the
    manifest; find the key an encrypted volume's image needs. Creates
    nothing.

    :raises errors.InvalidInput: one line naming the first defect.
    """
    reporter = reporter or NullReporter()
    bs = backup_set.load_set(source)
    reporter.step(f"Checking '{bs.data}' against its backup set")
    bs.verify_data()
    props = dict(properties or {})
    return CheckedSet(bs, _key_to_restore(conn, bs, props), props)


def restore_image(
    conn: Any,
    source: str | CheckedSet,
    *,
    name: str | None = None,
    properties: Mapping[str, str] | None = None,
    timeout: float = 3600.0,
    reporter: Reporter | None = None,
    interval: float | None = waits.DEFAULT_INTERVAL,
    clock: Callable[[], float] = time.monotonic,
    run: tags.Run | None = None,
    rename: bool = True,
) -> RestoredImage:
    """Upload a backup set to Glance and check that Glance agrees.

    Before anything is created the set is validated
    (:func:`osc_backup.common.backup_set.load_set`: manifest format,
    keys and types, file names inside the set, checksum file) and the
    data file is hashed and compared with the manifest (:func:`check_set`;
    a caller that checked several sets before creating anything passes
    the :class:`CheckedSet`, made with the same ``properties``). The recorded
    formats and properties are restored (those Glance owns are left out);
    ``name``/``properties`` override. The data is hashed again while it
    is uploaded, and the hash Glance computes is compared with the
    manifest's; on any mismatch or failure the new image (and a key this
    command stored) is deleted.
    The image is uploaded under the run's temporary name and renamed once
    verified, and a key stored for it is named with the run tag, so that
    ``backup cleanup`` finds what a killed run left. With ``rename=False``
    it keeps that name (and is not protected yet) until the caller, whose
    run is complete, passes the result to :func:`finish_image`.
    """
    reporter = reporter or NullReporter()
    started = clock()
    if isinstance(source, CheckedSet):
        checked = source
        if properties is None:
            properties = checked.properties
    else:
        checked = check_set(
            conn, source, properties=properties, reporter=reporter
        )
    bs, key = checked.backup_set, checked.key
    manifest, mpath, data = bs.manifest, bs.manifest_path, bs.data
    have_size = bs.size
    image_rec = manifest.get('image') or {}
    algo, want = bs.hash_algo, bs.hash_value
    body = create_body(
        manifest, name=name, properties=properties, reporter=reporter
    )
    if not body.get('name'):
        body['name'] = image_rec.get('id') or os.path.basename(data)
    deadline = waits.Deadline(timeout)
    run = run or tags.Run()
    cleanup = Cleanup(reporter, run_id=run.run_id)
    new_key_id: str | None = None
    final_name = str(body['name'])
    body['name'] = run.temporary_name('image', final_name)
    with cleanup.guard():
        if key is not None:
            new_key_id = _restore_key(
                conn, key, body, cleanup, reporter,
                name=run.key_name(final_name),
            )
        key_policy(body, new_key_id, reporter)
        reporter.step(f"Creating image '{final_name}'")
        with cleanup.creating():
            resp = conn.image.post('/images', json=body)
            errors.check_response(resp, 'Creating the image', (201,))
            image_id: str = resp.json()['id']
            cleanup.remove_image_on_failure(conn.image, image_id)
        local = hashlib.new(algo)
        reporter.step(f'Uploading {data} ({have_size} bytes) to {image_id}')
        resp = conn.image.put(
            f'/images/{image_id}/file',
            data=_chunks(data, [local]),
            headers={'Content-Type': 'application/octet-stream'},
            timeout=(30, max(60.0, deadline.remaining())),
        )
        errors.check_response(
            resp, f'Uploading the data of image {image_id}', (204,)
        )
        if local.hexdigest() != want:
            raise errors.BackupError(
                f"'{data}' does not match its manifest: {algo} "
                f'{local.hexdigest()}, expected {want}. The file is '
                'damaged; the uploaded image is deleted.'
            )
        reporter.step(f'Waiting for image {image_id} to become active')
        image = waits.wait_for_status(
            conn.image,
            conn.image.get_image(image_id),
            'active',
            kind='image',
            step='restore image',
            timeout=deadline,
            interval=interval,
        )
        verified = _verify_glance(image, manifest)
        protect = bool(image_rec.get('protected'))
        if rename:
            image = _finish(conn, image.id, final_name, protect)
        cleanup.outcome = f'image {image_id} is active'
    return RestoredImage(
        image_id=image.id,
        name=image.name,
        status=image.status,
        size=image.size,
        disk_format=image.disk_format,
        container_format=image.container_format,
        os_hash_algo=image.hash_algo,
        os_hash_value=image.hash_value,
        checksum=image.checksum,
        verified=verified,
        source_image_id=image_rec.get('id'),
        manifest=mpath,
        duration=round(clock() - started, 1),
        encryption_key_id=new_key_id,
        previous_encryption_key_id=key.old_id if key else None,
        final_name=final_name,
        protect=protect,
    )


def _finish(conn: Any, image_id: str, name: str, protect: bool) -> Any:
    image = conn.image.update_image(image_id, name=name)
    if protect:
        image = conn.image.update_image(image, is_protected=True)
    return image


def finish_image(conn: Any, made: RestoredImage) -> Any:
    """An image restored with ``rename=False``: its final name, and its
    protection, once the run that uses it is complete."""
    return _finish(conn, made.image_id, made.final_name, made.protect)


@dataclass
class _Key:
    old_id: str
    payload: bytes
    described: dict[str, Any]
    content_type: str
    origin: str


def encryption_key_id(manifest: Mapping[str, Any]) -> str | None:
    """The Barbican key ID recorded for an encrypted volume's image."""
    record = manifest.get('glance_record') or {}
    value = record.get(secrets.IMAGE_KEY_ID)
    return str(value) if value else None


def _key_to_restore(
    conn: Any,
    bs: backup_set.BackupSet,
    properties: Mapping[str, str],
) -> _Key | None:
    """The key an encrypted image needs, found before anything is made:
    the key file saved with the set (checked against the checksum file),
    else (same cloud) the recorded secret, copied.
    ``--property cinder_encryption_key_id=...`` opts out.
    """
    old_id = encryption_key_id(bs.manifest)
    if not old_id or secrets.IMAGE_KEY_ID in properties:
        return None
    data_name = bs.manifest['data']['file']
    enc = bs.encryption or {}
    key_name = enc.get('key_file') or data_name + secrets.KEY_SUFFIX
    meta_name = (
        enc.get('metadata_file') or data_name + backup_set.KEY_METADATA_SUFFIX
    )
    key_path = bs.member(key_name)
    if os.path.exists(key_path):
        payload, doc = secrets.parse_image_key(
            bs.read_member(key_name), bs.read_member(meta_name), key_path
        )
        return _Key(
            old_id, payload, dict(doc.get('secret') or {}),
            str(doc.get('payload_content_type') or secrets.OCTET_STREAM),
            key_path,
        )
    try:
        meta = secrets.find_secret(conn, old_id)
        payload, ctype = secrets.fetch_payload(conn, meta)
    except errors.BackupError as exc:
        raise errors.InvalidInput(
            f'The image of this backup set holds encrypted (LUKS) data, but '
            f'no key was saved with it ({key_path}) and its '
            f'key {old_id} cannot be read here ({exc}). Without the key the '
            'data is useless. Put the key file next to the data file, or '
            f'pass --property {secrets.IMAGE_KEY_ID}=<secret ID> to use an '
            'existing secret.'
        ) from None
    return _Key(
        old_id, payload, secrets.describe(meta), ctype,
        f'Barbican secret {old_id}',
    )


def _restore_key(
    conn: Any,
    key: _Key,
    body: dict[str, Any],
    cleanup: Cleanup,
    reporter: Reporter,
    *,
    name: str,
) -> str:
    """Store the key as a new secret named ``name``; point the image body
    at it."""
    reporter.step(f'Storing the image key from {key.origin} in Barbican')
    with cleanup.creating():
        href = secrets.store_secret(
            conn, key.payload, key.described,
            content_type_=key.content_type, name=name,
        )
        new_id = secrets.secret_uuid(href) or href
        cleanup.add(
            f'delete re-stored key {new_id}',
            lambda: secrets.delete_secret(conn, new_id),
            leftover=f'secret {new_id}',
            remove_command=['openstack', 'secret', 'delete', href],
            when=PARTIAL,
        )
    body[secrets.IMAGE_KEY_ID] = new_id
    reporter.note(
        f'The image key was stored again in Barbican from {key.origin}: '
        f'its ID changed, {key.old_id} -> {new_id}. The restored image '
        f'points at the new secret ({secrets.IMAGE_KEY_ID}); it is deleted '
        'with the image.'
    )
    return new_id


def key_policy(
    body: dict[str, Any], stored: str | None, reporter: Reporter
) -> None:
    """Who may delete the image's key: ``on_image_deletion`` only for the
    secret this very command stored (``stored``); any other key (one given
    with ``--property cinder_encryption_key_id=...``, say the live volume's
    own) gets ``do_not_delete``, so that deleting the image -- or this
    command's own failure cleanup -- never deletes a secret it did not
    create.
    """
    key_id = body.get(secrets.IMAGE_KEY_ID)
    if not key_id:
        return
    if stored is not None and key_id == stored:
        body[secrets.IMAGE_KEY_POLICY] = secrets.ON_IMAGE_DELETION
        return
    if body.get(secrets.IMAGE_KEY_POLICY) != secrets.DO_NOT_DELETE:
        reporter.note(
            f'The restored image uses key {key_id}, which this command did '
            f'not create: {secrets.IMAGE_KEY_POLICY} is set to '
            f'{secrets.DO_NOT_DELETE}, so deleting the image never deletes '
            'that secret.'
        )
    body[secrets.IMAGE_KEY_POLICY] = secrets.DO_NOT_DELETE


def _verify_glance(image: Any, manifest: Mapping[str, Any]) -> str:
    """Compare what Glance computed with the manifest; return what was
    compared (e.g. ``sha512``); raise on a mismatch."""
    rec = manifest.get('image') or {}
    want_size = int(manifest['data']['size'])
    if image.size is not None and int(image.size) != want_size:
        raise errors.BackupError(
            f'Glance stored {image.size} bytes for image {image.id}, the '
            f'backup set has {want_size}; the image is deleted.'
        )
    algo, value = backup_set.data_hash(manifest)
    pairs: list[tuple[str, str | None, str | None]] = []
    if image.hash_algo and image.hash_algo == algo:
        pairs.append((algo, image.hash_value, value))
    elif image.hash_algo and image.hash_algo == rec.get('os_hash_algo'):
        pairs.append((image.hash_algo, image.hash_value, rec['os_hash_value']))
    if image.checksum and rec.get('checksum'):
        pairs.append(('md5', image.checksum, rec['checksum']))
    if not pairs:
        raise errors.BackupError(
            f'Cannot check image {image.id}: Glance reports '
            f'{image.hash_algo or "no hash"}, the manifest has '
            f'{rec.get("os_hash_algo") or "no os_hash"} and no md5; the '
            'image is deleted.'
        )
    for algo, got, want in pairs:
        if got != want:
            raise errors.BackupError(
                f'Glance computed {algo} {got} for image {image.id}, the '
                f'backup set says {want}: the upload is corrupt; the image '
                'is deleted.'
            )
    return pairs[0][0]
