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
active. The image is deleted when the snapshot fails; once it is active
it is a complete backup and stays.

Plain module: takes an openstacksdk ``Connection``; no cliff.
"""

from __future__ import annotations

import json
from typing import Any

from openstack import exceptions as sdk_exc

from osc_backup.common import errors
from osc_backup.common import tags
from osc_backup.common import volumes
from osc_backup.common import waits
from osc_backup.common.cleanup import Cleanup
from osc_backup.common.progress import Reporter
from osc_backup.procedures import server_manifest
from osc_backup.procedures import server_plan
from osc_backup.procedures import volume_image

#: the method recorded on the root disk image
METHOD = 'server-image'


def snapshot_root(
    conn: Any, server: Any, disk: server_plan.Disk,
    opts: server_plan.Options, plan: server_plan.Plan, run: tags.Run,
    reporter: Reporter, deadline: waits.Deadline,
) -> dict[str, Any]:
    """createImage of the ephemeral root disk; wait until active."""
    label = server_plan.server_label(server)
    name = server_plan.root_image_name(server, opts, run)
    metadata = {
        **volume_image.base_record(METHOD, plan.consistency, run),
        server_plan.PROP_FLAVOR: server_manifest.flavor_name(server),
        **server_plan.disk_record(server, disk),
        **opts.properties,
    }
    if opts.description:
        metadata['description'] = opts.description
    if plan.consistency == volumes.CRASH_CONSISTENT:
        reporter.warn(
            f'server {label} is {server.status}: the root disk image is '
            'crash-consistent (like pulling the power cord), unless the '
            "image asks Nova to quiesce the guest (os_require_quiesce)."
        )
    cleanup = Cleanup(
        reporter, keep_temporary=opts.keep_temporary, run_id=run.run_id
    )
    with cleanup.guard():
        reporter.step(f'Nova: createImage of server {label} -> {name}')
        with cleanup.creating():
            try:
                image_id = server.create_image(conn.compute, name, metadata)
            except sdk_exc.HttpException as exc:
                raise errors.BackupError(
                    f'Nova refused to snapshot server {label}: '
                    f'{exc.details or exc}'
                ) from exc
            cleanup.remove_image_on_failure(conn.image, image_id)
        reporter.step(f'Waiting for image {image_id} to become active')
        image = waits.wait_for_status(
            conn.image, conn.image.get_image(image_id), 'active',
            kind='image', step='Nova snapshot of the root disk',
            timeout=deadline, interval=opts.interval,
        )
        cleanup.outcome = f'image {image_id} is active'
    image = drop_inherited_record(conn, image, metadata)
    result = {
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
    if opts.download is not None:
        result['files'] = volume_image.download_image(
            conn, image.id, opts.download, reporter
        )
    return result


def drop_inherited_record(
    conn: Any, image: Any, record: dict[str, str]
) -> Any:
    """Remove osc_backup_* properties Nova copied from the base image.

    Nova gives a snapshot the properties of the image the server booted
    from; when that image was itself made by osc-backup (a restored
    volume image, say), its record (source volume, size...) would describe
    the wrong thing. Only possible once the image is active.
    """
    props = dict(getattr(image, 'properties', None) or {})
    stale = sorted(
        k for k in props if k.startswith(tags.PREFIX) and k not in record
    )
    if not stale:
        return image
    patch = [{'op': 'remove', 'path': f'/{k}'} for k in stale]
    resp = conn.image.patch(
        f'/images/{image.id}',
        data=json.dumps(patch),
        headers={
            'Content-Type': 'application/openstack-images-v2.1-json-patch'
        },
    )
    errors.check_response(
        resp, f'Removing inherited properties from image {image.id}',
        (200,),
    )
    return conn.image.get_image(image.id)
