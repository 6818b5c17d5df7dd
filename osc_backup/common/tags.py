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

Everything a run creates that an interrupted run could leave behind is
named with the tool's prefix and the run ID (the run tag):

* ``osc-backup-tmp-<run>-<role>-of-<source>``: a resource that exists only
  while the run is going, or that the run renames once it is complete
  (temporary snapshots and volumes; images while they are uploaded and
  until their record is written; Nova root snapshots until they are
  active; restore target volumes, and the server, volumes and images of
  a server restore, until the restore is done);
* ``snapshot for osc-backup-tmp-<run>-nova-of-<server>``: the Cinder
  snapshots Nova's createImage makes of a volume-booted server's volumes
  (Nova names them after the image, which has the run's temporary name);
* ``osc-backup-key-<run>-of-<image>``: a Barbican secret the run stored
  for an image it restores (Barbican names cannot change; the secret is
  a leftover only while no image refers to it).

Volumes and snapshots also carry metadata with the tool's name and the run
ID. ``openstack backup cleanup`` touches only names of this shape, so it can
find what an interrupted run left, and so can a person looking at
``volume list``.
"""

from __future__ import annotations

import datetime
import re
import uuid
from dataclasses import dataclass, field

from osc_backup.common import errors
from osc_backup.common import records

TOOL = 'osc-backup'
PREFIX = records.PREFIX

#: Name prefixes (see the module docstring).
TEMPORARY_PREFIX = f'{TOOL}-tmp-'
KEY_PREFIX = f'{TOOL}-key-'

#: Nova names the snapshots of a createImage "snapshot for <image name>"
NOVA_SNAPSHOT_PREFIX = 'snapshot for '

#: The role in the temporary name of what a restore creates (a target
#: volume, a server) until the restore is complete.
RESTORE_ROLE = 'restore'

#: A run ID: 12 lower-case hex digits.
RUN_ID_PATTERN = r'[0-9a-f]{12}'
_TAGGED_NAME = re.compile(
    rf'^(?P<prefix>{re.escape(TEMPORARY_PREFIX)}|{re.escape(KEY_PREFIX)})'
    rf'(?P<run_id>{RUN_ID_PATTERN})-.'
)


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

    def __post_init__(self) -> None:
        if not is_run_id(self.run_id):
            raise ValueError(f'not a run ID: {self.run_id!r}')

    def temporary_name(self, role: str, source: str) -> str:
        """e.g. ``osc-backup-tmp-3f2a9c1b7d4e-snapshot-of-db-data``."""
        return f'{self.temporary_prefix(role)}{_slug(source)}'

    def temporary_prefix(self, role: str) -> str:
        """How every temporary name of ``role`` of this run starts."""
        return f'{TEMPORARY_PREFIX}{self.run_id}-{role}-of-'

    def key_name(self, image: str) -> str:
        """The name of a secret stored for an image this run restores."""
        return f'{KEY_PREFIX}{self.run_id}-of-{_slug(image)}'

    def temporary_metadata(self, source_volume_id: str) -> dict[str, str]:
        return {
            records.TOOL: TOOL,
            records.RUN_ID: self.run_id,
            records.TEMPORARY: 'true',
            records.SOURCE_VOLUME_ID: source_volume_id,
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


def is_run_id(text: str | None) -> bool:
    return bool(text) and re.fullmatch(RUN_ID_PATTERN, text or '') is not None


def tagged_name(name: str | None) -> tuple[str, str] | None:
    """``(kind, run ID)`` of a name osc-backup gives what a run may leave
    behind (kind ``'tmp'`` or ``'key'``); None for any other name."""
    match = _TAGGED_NAME.match(name or '')
    if match is None:
        return None
    kind = 'key' if match['prefix'] == KEY_PREFIX else 'tmp'
    return kind, match['run_id']


def is_temporary(metadata: dict[str, str] | None) -> bool:
    md = metadata or {}
    return md.get(records.TOOL) == TOOL and md.get(records.TEMPORARY) == 'true'
