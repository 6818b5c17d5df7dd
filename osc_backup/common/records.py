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

"""The keys of osc-backup's record, in one place.

What the tool makes carries a record under ``osc_backup_*`` keys: image
properties, Cinder backup and volume metadata. ``backup cleanup`` and
restores read them back, so every module takes its keys from here and no
other module spells one out. User properties may not use the prefix
(:func:`osc_backup.common.tags.check_not_reserved`).
"""

from __future__ import annotations

PREFIX = 'osc_backup_'

# -- every record -------------------------------------------------------
#: the tool that made it ('osc-backup')
TOOL = PREFIX + 'tool'
#: the run (12 hex digits) that made it
RUN_ID = PREFIX + 'run_id'
#: 'true' on a temporary snapshot or volume
TEMPORARY = PREFIX + 'temporary'
#: the osc-backup version that made it
TOOL_VERSION = PREFIX + 'tool_version'
#: when (UTC, ISO 8601)
CREATED_AT = PREFIX + 'created_at'
#: how: 'image', 'backup', 'server-image'
METHOD = PREFIX + 'method'
#: 'offline' or 'crash-consistent'
CONSISTENCY = PREFIX + 'consistency'
#: on an incremental Cinder backup: the backup it builds on (the newest
#: 'available' backup of the volume by data_timestamp when it was made)
PARENT_BACKUP_ID = PREFIX + 'parent_backup_id'

# -- the source volume --------------------------------------------------
SOURCE_VOLUME_ID = PREFIX + 'source_volume_id'
SOURCE_VOLUME_NAME = PREFIX + 'source_volume_name'
VOLUME_TYPE = PREFIX + 'volume_type'
VOLUME_SIZE_GB = PREFIX + 'volume_size_gb'
BOOTABLE = PREFIX + 'bootable'
ENCRYPTED = PREFIX + 'encrypted'
#: the source volume's key (a Cinder backup of an encrypted volume)
ENCRYPTION_KEY_ID = PREFIX + 'encryption_key_id'

# -- the server a disk belongs to ---------------------------------------
SERVER_ID = PREFIX + 'server_id'
SERVER_NAME = PREFIX + 'server_name'
#: 'root-disk' or 'volume'
SERVER_DISK = PREFIX + 'server_disk'
DEVICE = PREFIX + 'device'
BOOT_INDEX = PREFIX + 'boot_index'
FLAVOR = PREFIX + 'flavor'
#: the server's key pair name
KEY_NAME = PREFIX + 'key_name'
#: the server's availability zone
AVAILABILITY_ZONE = PREFIX + 'availability_zone'
#: the server's metadata, as a JSON object (left out when longer than a
#: property value may be)
SERVER_METADATA = PREFIX + 'server_metadata'
#: the names of the server's networks, as a JSON list (same limit)
NETWORKS = PREFIX + 'networks'

# -- restores -----------------------------------------------------------
#: on a restored volume: the backup or image it came from; on a restored
#: server: ``run:<run ID>`` of the server backup it came from
RESTORED_FROM = PREFIX + 'restored_from'
