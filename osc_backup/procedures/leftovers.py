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

"""Find and remove what interrupted runs left behind.

A run that was killed (SIGKILL, power loss, lost network) could not run its
cleanup stack. Its temporary volumes and snapshots carry osc-backup's
metadata (tool name, run ID, ``temporary``), which is how we find them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from osc_backup.common import tags
from osc_backup.common import volumes
from osc_backup.common import waits
from osc_backup.common.cleanup import shell_command
from osc_backup.common.progress import Reporter


@dataclass
class Leftover:
    kind: str  # 'volume' or 'snapshot'
    id: str
    name: str | None
    status: str | None
    run_id: str | None
    created_at: str | None
    result: str = ''

    @property
    def remove_command(self) -> str:
        noun = waits.cli_noun(self.kind).split()
        return shell_command('openstack', *noun, 'delete', self.id)


def _matches(metadata: dict[str, str] | None, run_id: str | None) -> bool:
    if not tags.is_temporary(metadata):
        return False
    return run_id is None or (metadata or {}).get(tags.KEY_RUN_ID) == run_id


def find_leftovers(conn: Any, run_id: str | None = None) -> list[Leftover]:
    """Temporary volumes and snapshots of osc-backup runs (or of one)."""
    bs = conn.block_storage
    found: list[Leftover] = []
    for kind, items in (
        ('volume', bs.volumes(details=True)),
        ('snapshot', bs.snapshots(details=True)),
    ):
        for res in items:
            if _matches(res.metadata, run_id):
                found.append(
                    Leftover(
                        kind=kind,
                        id=res.id,
                        name=res.name,
                        status=res.status,
                        run_id=(res.metadata or {}).get(tags.KEY_RUN_ID),
                        created_at=res.created_at,
                    )
                )
    return found


def remove_leftovers(
    conn: Any,
    leftovers: list[Leftover],
    reporter: Reporter,
    *,
    interval: float = waits.DEFAULT_INTERVAL,
) -> list[Leftover]:
    """Delete them: volumes first (they may come from the snapshots).

    Sets ``result`` on each; returns the ones that could not be removed.
    """
    failed: list[Leftover] = []
    order = sorted(leftovers, key=lambda lo: lo.kind != 'volume')
    for lo in order:
        reporter.step(f'Deleting {lo.kind} {lo.id}')
        try:
            if lo.kind == 'volume':
                volumes.delete_volume(
                    conn.block_storage, lo.id,
                    step='delete leftover volume', interval=interval,
                )
            else:
                volumes.delete_snapshot(
                    conn.block_storage, lo.id,
                    step='delete leftover snapshot', interval=interval,
                )
            lo.result = 'deleted'
        except Exception as exc:
            lo.result = f'failed: {exc}'
            failed.append(lo)
    return failed
