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
refused without ``force``; from 3.66 on ``force`` is not needed. Decide
from the microversion the SDK will *actually send* for a snapshot create
(openstacksdk caps its Snapshot resource at 3.65 while the server may offer
more, which is the trap python-openstackclient 10.2.1 falls into).
"""

from __future__ import annotations

from typing import Any

from keystoneauth1 import discover

SNAPSHOT_FORCE_NOT_NEEDED = (3, 66)


def snapshot_microversion(block_storage: Any) -> str | None:
    """The microversion openstacksdk sends when creating a snapshot."""
    from openstack.block_storage.v3 import snapshot

    return snapshot.Snapshot._get_microversion(block_storage)


def snapshot_needs_force(block_storage: Any, volume_status: str) -> bool:
    """Whether a snapshot create must carry ``force=True``."""
    if volume_status != 'in-use':
        return False
    version = snapshot_microversion(block_storage)
    if version is None:
        return True
    return bool(
        discover.normalize_version_number(version) < SNAPSHOT_FORCE_NOT_NEEDED
    )
