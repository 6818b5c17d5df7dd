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

"""One volume backup by either method: the choice and the fallback.

``backup volume create`` and ``backup server create`` (for every attached
volume) both go through here, so the automatic choice
(:func:`volume_backup.detect`) and the fall-back to the image path when
Cinder rejects a member's try are written once.

Plain module: takes an openstacksdk ``Connection``; no cliff.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from osc_backup.common import errors
from osc_backup.common import tags
from osc_backup.common.progress import Reporter
from osc_backup.procedures import volume_backup
from osc_backup.procedures import volume_image

AUTO = volume_backup.AUTO
IMAGE = volume_image.METHOD
BACKUP = volume_backup.METHOD


@dataclass
class Choice:
    """The method a volume backup takes, and why."""

    method: str
    reason: str
    #: the user named the method (--via-image / --via-backup)
    explicit: bool = False
    #: False when a member's backup is only tried (see detect)
    confirmed: bool = True
    #: options given that only the backup path knows: a rejection is then
    #: an error, not a fall-back
    backup_only: list[str] = field(default_factory=list)


def choose(
    conn: Any,
    volume: Any,
    requested: str,
    *,
    image_only: list[str] | None = None,
    backup_only: list[str] | None = None,
    availability_zone: str | None = None,
    probe: bool = True,
) -> Choice:
    """Decide the method for ``volume``.

    :param requested: 'image', 'backup' or 'auto'.
    :param image_only: options the user gave that only the image path
        knows (they decide 'auto').
    :param backup_only: options the user gave that only the backup path
        knows ('auto' must then find a backup service).
    :param probe: see :func:`volume_backup.detect` (off for --dry-run).
    :raises errors.InvalidInput: backup-only options, but no service.
    """
    image_only = image_only or []
    backup_only = backup_only or []
    if requested != AUTO:
        return Choice(
            requested, f'requested with --via-{requested}', explicit=True,
            backup_only=backup_only,
        )
    if image_only:
        verb = 'needs' if len(image_only) == 1 else 'need'
        return Choice(
            IMAGE, f'{", ".join(image_only)} {verb} the image path'
        )
    found = volume_backup.detect(
        conn, volume, availability_zone, probe=probe
    )
    if backup_only and found.method != BACKUP:
        raise errors.InvalidInput(
            f'{", ".join(backup_only)} need the Cinder backup path, but '
            f'{found.reason}.'
        )
    return Choice(
        found.method, found.reason, confirmed=found.confirmed,
        backup_only=backup_only,
    )


def backup_volume(
    conn: Any,
    volume: Any,
    choice: Choice,
    image_opts: volume_image.Options,
    backup_opts: volume_backup.Options,
    *,
    run: tags.Run,
    reporter: Reporter,
    snapshot: Any = None,
) -> dict[str, Any]:
    """Back up ``volume`` by ``choice``; the result of that procedure.

    :param snapshot: back up this snapshot of ``volume``, which the caller
        took and deletes (see the procedures).

    When Cinder rejects a backup that was only tried (a member's automatic
    choice), the image path is taken and ``choice`` is updated to say so,
    so that a caller backing up several volumes does not try again.
    """
    if choice.method == BACKUP:
        try:
            return volume_backup.backup_volume_via_backup(
                conn, volume, backup_opts, run=run, reporter=reporter,
                method_reason=choice.reason, snapshot=snapshot,
            )
        except volume_backup.NoBackupService as exc:
            if choice.confirmed or choice.explicit or choice.backup_only:
                raise errors.BackupError(
                    f'{exc} Use --via-image to back up to an image instead.'
                ) from exc
            reporter.warn(str(exc))
            reason = (
                'Cinder has no backup service (it rejected the backup); '
                'fell back to the image path'
            )
            if exc.leftover:
                reason += (
                    f' (rejected backup record {exc.leftover} left behind)'
                )
            choice.method, choice.reason = IMAGE, reason
            choice.confirmed = True
    return volume_image.backup_volume_via_image(
        conn, volume, image_opts, run=run, reporter=reporter,
        method_reason=choice.reason, snapshot=snapshot,
    )
