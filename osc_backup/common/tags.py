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

"""Names and metadata that mark what osc-backup creates.

Every temporary resource gets a recognisable name and metadata with the
tool's name and the run ID, so ``openstack backup cleanup`` can find what an
interrupted run left, and so can a person looking at ``volume list``.
"""

from __future__ import annotations

import datetime
import re
import uuid
from dataclasses import dataclass, field

from osc_backup.common import errors

TOOL = 'osc-backup'
PREFIX = 'osc_backup_'

#: Metadata keys on temporary volumes and snapshots.
KEY_TOOL = PREFIX + 'tool'
KEY_RUN_ID = PREFIX + 'run_id'
KEY_TEMPORARY = PREFIX + 'temporary'
KEY_SOURCE_VOLUME = PREFIX + 'source_volume_id'


def tool_version() -> str:
    """The installed osc-backup version (read lazily, never at import)."""
    from importlib import metadata

    try:
        return metadata.version('osc-backup')
    except metadata.PackageNotFoundError:
        return 'unknown'


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def utc_stamp(when: datetime.datetime) -> str:
    return when.strftime('%Y%m%dT%H%M%SZ')


def _slug(text: str) -> str:
    return re.sub(r'[^A-Za-z0-9_.-]+', '-', text).strip('-')[:60] or 'x'


@dataclass
class Run:
    """One invocation of a procedure: its ID, start time and naming."""

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started: datetime.datetime = field(default_factory=utc_now)

    def temporary_name(self, role: str, source: str) -> str:
        """e.g. ``osc-backup-tmp-3f2a9c1b7d4e-snapshot-of-db-data``."""
        return f'{TOOL}-tmp-{self.run_id}-{role}-of-{_slug(source)}'

    def temporary_metadata(self, source_volume_id: str) -> dict[str, str]:
        return {
            KEY_TOOL: TOOL,
            KEY_RUN_ID: self.run_id,
            KEY_TEMPORARY: 'true',
            KEY_SOURCE_VOLUME: source_volume_id,
        }

    def default_name(self, source: str) -> str:
        """A unique backup name from the source name and a UTC time."""
        return (
            f'{_slug(source)}-backup-{utc_stamp(self.started)}'
            f'-{self.run_id[:6]}'
        )


def check_not_reserved(properties: dict[str, str]) -> None:
    """User properties may not forge osc-backup's own record."""
    reserved = sorted(k for k in properties if k.startswith(PREFIX))
    if reserved:
        raise errors.InvalidInput(
            f"Property keys starting with '{PREFIX}' are reserved for "
            f"osc-backup's own record: {', '.join(reserved)}."
        )


def is_temporary(metadata: dict[str, str] | None) -> bool:
    md = metadata or {}
    return md.get(KEY_TOOL) == TOOL and md.get(KEY_TEMPORARY) == 'true'
