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

"""Block Storage microversion decisions.

The rule (errata): before 3.66 a snapshot of an ``in-use`` volume is
refused without ``force``; from 3.66 on ``force`` is not needed (and
``force=false`` is rejected). So the snapshot is created at a microversion
*we* choose, and ``force`` is decided from that very microversion: the
user's ``--os-volume-api-version`` if given, else the highest the cloud
offers up to 3.66. (Letting openstacksdk pick is the trap
python-openstackclient 10.2.1 falls into: openstacksdk caps its Snapshot
resource at 3.65 while the server may offer more, and what it will send
can only be read from its private attributes.)

Public openstacksdk calls only, from the requirements' floor (4.5.0) on:
``openstack.utils.maximum_supported_microversion`` and
``Resource.create(session, microversion=...)``.
"""

from __future__ import annotations

from typing import Any

from keystoneauth1 import discover

SNAPSHOT_FORCE_NOT_NEEDED = (3, 66)
#: the highest snapshot-create microversion osc-backup asks for
SNAPSHOT_MICROVERSION = '3.66'
#: what a cloud that announces no microversions speaks
BASE_MICROVERSION = '3.0'


def snapshot_microversion(block_storage: Any) -> str | None:
    """The microversion a snapshot create is sent with (None: the API's
    base version, 3.0)."""
    from openstack import utils

    pinned = getattr(block_storage, 'default_microversion', None)
    if pinned:
        return str(pinned)
    return utils.maximum_supported_microversion(
        block_storage, SNAPSHOT_MICROVERSION
    )


def snapshot_needs_force(
    version: str | None, volume_status: str
) -> bool:
    """Whether a snapshot create sent at ``version`` must carry
    ``force=True``."""
    if volume_status != 'in-use':
        return False
    if version is None:
        return True
    return bool(
        discover.normalize_version_number(version) < SNAPSHOT_FORCE_NOT_NEEDED
    )


def create_snapshot(
    block_storage: Any, attrs: dict[str, Any], volume_status: str
) -> Any:
    """``POST /snapshots`` at :func:`snapshot_microversion`, with ``force``
    exactly where that microversion needs it; the new Snapshot."""
    from openstack.block_storage.v3 import snapshot

    # never None: openstacksdk would then pick a microversion of its own
    version = snapshot_microversion(block_storage) or BASE_MICROVERSION
    body = dict(attrs)
    if snapshot_needs_force(version, volume_status):
        body['force'] = True
    return snapshot.Snapshot.new(**body).create(
        block_storage, microversion=version
    )
