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

"""The server manifest (format ``osc-backup-server``, version 1).

One JSON file per ``backup server create`` run with ``--download`` or
``--manifest``: what a restore needs to build the server again (flavor,
image, key pair, networks, security groups, metadata) and, for each disk,
its device, boot index, volume and the artifact (image or Cinder backup)
that holds it. The format, how it is built from a plan, and how it is
written live here, so that a ``server restore`` reads the same
definition.

Plain module: no cliff, no Nova calls (the plan brings what it records).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from osc_backup.common import tags
from osc_backup.procedures import image_sets

if TYPE_CHECKING:
    from osc_backup.procedures.server_plan import Plan

FORMAT = 'osc-backup-server'
VERSION = 1
#: the default manifest's file name ends with this
SUFFIX = '.server.json'


def image_id_of(server: Any) -> str | None:
    """The image a server booted from; None when it boots from a volume."""
    image = server.image
    if isinstance(image, dict):
        return image.get('id') or None
    return getattr(image, 'id', None) or None


def flavor_of(server: Any) -> dict[str, Any]:
    """The flavor a server runs with, as the manifest records it."""
    flavor = server.flavor
    if flavor is None:
        return {}
    get = (
        flavor.get if isinstance(flavor, dict)
        else lambda key: getattr(flavor, key, None)
    )
    data = {
        key: get(key)
        for key in (
            'id', 'original_name', 'vcpus', 'ram', 'disk', 'ephemeral',
            'swap', 'extra_specs',
        )
    }
    return {k: v for k, v in data.items() if v not in (None, '')}


def flavor_name(server: Any) -> str:
    flavor = flavor_of(server)
    return str(flavor.get('original_name') or flavor.get('id') or '?')


def build(
    conn: Any, plan: Plan, run: tags.Run, *, duration: float,
) -> dict[str, Any]:
    """The server manifest of a finished run: what a restore needs."""
    server = plan.server
    attachments = {a.volume_id: a for a in plan.attachments}
    disks = []
    for disk in plan.disks + plan.skipped:
        entry: dict[str, Any] = {
            'role': disk.role,
            'device': disk.device,
            'boot_index': disk.boot_index,
        }
        if disk.volume is not None:
            volume = disk.volume
            attachment = attachments.get(volume.id)
            entry['volume'] = {
                'id': volume.id,
                'name': volume.name,
                'size_gb': volume.size,
                'volume_type': volume.volume_type,
                'bootable': bool(volume.is_bootable),
                'encrypted': bool(volume.is_encrypted),
                'delete_on_termination': getattr(
                    attachment, 'delete_on_termination', None
                ),
                'tag': getattr(attachment, 'tag', None),
            }
        if disk.result:
            entry['artifact'] = {
                k: v for k, v in disk.result.items()
                if k not in ('duration', 'run_id', 'source_volume_id',
                             'source_volume_name')
            }
        else:
            entry['artifact'] = None
        disks.append(entry)
    addresses = server.addresses or {}
    return {
        'format': FORMAT,
        'format_version': VERSION,
        'tool': tags.TOOL,
        'tool_version': tags.tool_version(),
        'run_id': run.run_id,
        'created_at': run.started.isoformat(timespec='seconds'),
        'duration': duration,
        'source': image_sets.source_info(conn),
        'server': {
            'id': server.id,
            'name': server.name,
            'status': server.status,
            'description': getattr(server, 'description', None),
            'flavor': flavor_of(server),
            'image_id': image_id_of(server),
            'volume_backed': plan.volume_backed,
            'key_name': server.key_name,
            'availability_zone': server.availability_zone,
            'networks': {
                net: [
                    {
                        'addr': a.get('addr'),
                        'version': a.get('version'),
                        'type': a.get('OS-EXT-IPS:type'),
                        'mac': a.get('OS-EXT-IPS-MAC:mac_addr'),
                    }
                    for a in addrs
                ]
                for net, addrs in addresses.items()
            },
            'security_groups': sorted({
                g.get('name') for g in (server.security_groups or [])
                if isinstance(g, dict) and g.get('name')
            }),
            'metadata': dict(server.metadata or {}),
            'tags': list(getattr(server, 'tags', None) or []),
        },
        'consistency': plan.consistency,
        'disks': disks,
        'notes': plan.notes,
    }


def write(path: str, manifest: dict[str, Any]) -> None:
    data = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    image_sets.write_atomic(path, (data + '\n').encode())
