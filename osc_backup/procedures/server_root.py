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

"""The root disk of an image-booted server, as a Glance image.

Nova's ``createImage`` copies the ephemeral root disk (and nothing else)
into a new image; the request carries the backup's ``osc_backup_*``
record as the image's metadata. Nova also gives the snapshot the
properties of the image the server booted from: those of osc-backup's own
record that are not part of this run's are removed once the image is
active. The request (:func:`request_root`) is made while the server's
disks are captured (:mod:`server_capture`); the wait for the image
(:func:`wait_root`) comes after. The image is deleted when the run fails
before it is active; once it is active it is a complete backup and
stays.

Plain module: takes an openstacksdk ``Connection``; no cliff.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Callable
from typing import Any, TypeVar

from openstack import exceptions as sdk_exc

from osc_backup.common import errors
from osc_backup.common import records
from osc_backup.common import tags
from osc_backup.common import waits
from osc_backup.common.cleanup import Cleanup, Undo
from osc_backup.common.progress import Reporter
from osc_backup.common.text import printable
from osc_backup.procedures import secrets
from osc_backup.procedures import server_manifest
from osc_backup.procedures import server_plan
from osc_backup.procedures import volume_image

LOG = logging.getLogger(__name__)

T = TypeVar('T')

#: the method recorded on the root disk image
METHOD = 'server-image'


def root_record(
    server: Any, disk: server_plan.Disk, opts: server_plan.Options,
    plan: server_plan.Plan, run: tags.Run,
) -> dict[str, str]:
    """The root disk image's properties: the complete record of this run
    and the user's properties."""
    metadata = {
        **volume_image.base_record(METHOD, plan.consistency, run),
        records.FLAVOR: server_manifest.flavor_name(server),
        **server_plan.disk_record(server, disk),
        **opts.properties,
    }
    if opts.description:
        metadata['description'] = opts.description
    return metadata


def request_root(
    conn: Any, server: Any, disk: server_plan.Disk,
    opts: server_plan.Options, plan: server_plan.Plan, run: tags.Run,
    reporter: Reporter, cleanup: Cleanup,
) -> tuple[str, Undo]:
    """createImage of the ephemeral root disk; its deletion on failure is
    registered with ``cleanup`` (:meth:`Cleanup.drop` it once the image is
    active: :func:`wait_root`). Returns the image ID and that undo.
    """
    label = server_plan.server_label(server)
    name = server_plan.root_image_name(server, opts, run)
    # named with the run tag until it is complete (what `backup cleanup`
    # finds when the run is killed); finish_root gives it its name
    snapshot_name = server_plan.root_snapshot_name(server, run)
    metadata = root_record(server, disk, opts, plan, run)
    if plan.mode == server_plan.MODE_CONCURRENT:
        reporter.warn(
            f'server {label} is {printable(server.status)}: the root disk '
            'image is crash-consistent (like pulling the power cord), '
            'unless the '
            "image asks Nova to quiesce the guest (os_require_quiesce)."
        )
    reporter.step(f'Nova: createImage of server {label} -> {name}')
    with cleanup.creating():
        image_id: str = nova_request(
            'snapshot', label,
            lambda: server.create_image(
                conn.compute, snapshot_name, metadata
            ),
        )
        undo = cleanup.remove_image_on_failure(conn.image, image_id)
    return image_id, undo


def nova_request(what: str, label: str, call: Callable[[], T]) -> T:
    """``call()``; Nova's refusal as one :class:`errors.BackupError`
    ('Nova refused to <what> server <label>: <Nova's reason>')."""
    try:
        return call()
    except sdk_exc.HttpException as exc:
        raise errors.BackupError(
            f'Nova refused to {what} server {label}: {exc.details or exc}'
        ) from exc


def wait_root(
    conn: Any, image_id: str, opts: server_plan.Options,
    deadline: waits.Deadline,
) -> Any:
    """Wait until the root disk image is active: a complete backup, which
    :func:`finish_root` completes."""
    return waits.wait_for_status(
        conn.image, conn.image.get_image(image_id), 'active',
        kind='image', step='Nova snapshot of the root disk',
        timeout=deadline, interval=opts.interval,
    )


def describe(image: Any, plan: server_plan.Plan) -> dict[str, Any]:
    """The root disk's line of the result and of the manifest."""
    return {
        'method': METHOD,
        'image_id': image.id,
        'name': image.name,
        'status': image.status,
        'size': image.size,
        'disk_format': image.disk_format,
        'os_hash_algo': image.hash_algo,
        'os_hash_value': image.hash_value,
        'consistency': plan.consistency,
        'files': [],
    }


class _StaleRecord(Exception):
    def __init__(self, keys: list[str], cause: Exception) -> None:
        super().__init__(str(cause))
        self.keys = keys
        self.cause = cause


def finish_root(
    conn: Any, image: Any, server: Any, disk: server_plan.Disk,
    opts: server_plan.Options, plan: server_plan.Plan, run: tags.Run,
    reporter: Reporter,
) -> None:
    """Complete the active root image: remove the record it inherited,
    then download it (``--download``).

    The image is a complete backup by now: whatever fails here keeps it,
    and the error says so and how to finish by hand.
    """
    record = root_record(server, disk, opts, plan, run)
    name = server_plan.root_image_name(server, opts, run)
    try:
        drop_inherited_record(conn, image, record, name=name)
    except _StaleRecord as exc:
        label = server_plan.server_label(server)
        renamed = _rename(conn, image, name)
        unset = ' '.join(
            f'--property {shlex.quote(printable(k))}' for k in exc.keys
        )
        fix = (
            f'Remove it with: openstack image unset {unset} {image.id}'
            if exc.keys else ''
        )
        raise errors.BackupError(
            f'Image {image.id}, the root disk of server {label}, is active '
            'and kept (a complete backup), but completing it failed: the '
            'osc_backup_* record Nova copied into it from the image the '
            f'server booted from could not be removed: {exc.cause} '
            f'{renamed} {fix}'.strip()
        ) from exc
    if opts.download is not None:
        disk.result['files'] = volume_image.download_image(
            conn, image.id, opts.download, reporter
        )


def _rename(conn: Any, image: Any, name: str) -> str:
    """Give the kept image its final name, so that ``backup cleanup``
    does not take it for the snapshot of a killed run; what happened."""
    try:
        conn.image.update_image(image.id, name=name)
        return f"It is named '{name}'."
    except Exception as exc:
        LOG.debug('Renaming image %s failed', image.id, exc_info=True)
        return (
            f"It still has its temporary name '{image.name}' (renaming it "
            f"failed too: {exc}), which 'openstack backup cleanup' removes: "
            f'keep it with: openstack image set --name {shlex.quote(name)} '
            f'{image.id}.'
        )


def drop_inherited_record(
    conn: Any, image: Any, record: dict[str, str], *, name: str
) -> None:
    """Remove osc_backup_* properties Nova copied from the base image.

    Nova gives a snapshot the properties of the image the server booted
    from; when that image was itself made by osc-backup (a restored
    volume image, say), its record (source volume, size...) would describe
    the wrong thing. Only possible once the image is active. The same
    patch gives the image its final ``name`` (it was created under the
    run's temporary name). A Nova that
    still copies ``cinder_encryption_key_deletion_policy`` (newer ones do
    not) would tie the base image's key to this image's deletion: it is
    set to ``do_not_delete``, this run stored no key.

    :raises _StaleRecord: naming the keys that stay.
    """
    props = dict(getattr(image, 'properties', None) or {})
    stale = sorted(
        k for k in props if k.startswith(tags.PREFIX) and k not in record
    )
    patch: list[dict[str, str]] = [
        {'op': 'remove', 'path': f'/{k}'} for k in stale
    ]
    if props.get(secrets.IMAGE_KEY_POLICY) not in (None, 'do_not_delete'):
        patch.append({
            'op': 'replace', 'path': f'/{secrets.IMAGE_KEY_POLICY}',
            'value': 'do_not_delete',
        })
    if image.name != name:
        patch.append({'op': 'replace', 'path': '/name', 'value': name})
    if not patch:
        return
    try:
        resp = conn.image.patch(
            f'/images/{image.id}',
            data=json.dumps(patch),
            headers={
                'Content-Type':
                    'application/openstack-images-v2.1-json-patch'
            },
        )
        errors.check_response(
            resp, f'Removing inherited properties from image {image.id}',
            (200,),
        )
    except Exception as exc:
        keys = stale + [
            op['path'][1:] for op in patch
            if op['op'] == 'replace' and op['path'] != '/name'
        ]
        raise _StaleRecord(keys, exc) from exc
