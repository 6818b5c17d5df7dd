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
cleanup stack. Everything it may leave carries the tool's prefix and its
run tag in its *name* (see :mod:`osc_backup.common.tags`), and that is the
only thing this module trusts; it touches nothing else:

* ``osc-backup-tmp-<run>-...`` volumes and snapshots: temporaries of the
  image path, and restore target volumes of a restore that did not finish
  (a finished one is renamed);
* ``osc-backup-tmp-<run>-...`` images of the current project: uploads that
  never got their record, Nova root snapshots of a server run that did
  not finish (a finished one is renamed), and the createImage images of
  volume-booted servers (no data: a ``block_device_mapping`` naming
  Nova's snapshots);
* ``snapshot for osc-backup-tmp-<run>-...`` snapshots: those Nova's
  createImage made of a volume-booted server's volumes for a server run
  (Nova names them after that image; they carry no metadata of ours);
* ``osc-backup-key-<run>-...`` Barbican secrets that no image refers to
  (``cinder_encryption_key_id``): keys an image restore stored for an image
  it never finished;
* ``osc-backup-tmp-<run>-restore-of-...`` servers of a ``backup server
  restore`` that did not finish (a finished one is renamed), only with
  the metadata that restore gave them (the tool, that run, the restore
  mark): see :func:`unfinished_restore`. With such a server go the volumes
  and the root disk image of that restore that already had their final
  names (the restore renames them just before the server).

Volumes and snapshots also carry osc-backup's metadata; one whose metadata
names another run or another tool is not touched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from openstack import exceptions as sdk_exc

from osc_backup.common import records
from osc_backup.common import tags
from osc_backup.common import volumes
from osc_backup.common import waits
from osc_backup.common.cleanup import shell_command
from osc_backup.common.progress import Reporter
from osc_backup.procedures import secrets
from osc_backup.procedures import server_restore

LOG = logging.getLogger(__name__)

#: removal order: servers (their volumes and images are free once they
#: are gone), images (an image may take its key copy with it), volumes
#: (they may come from the snapshots), snapshots, secrets
KINDS = ('server', 'image', 'volume', 'snapshot', 'secret')

#: what a temporary name's role says the resource was
ROLES = {
    'snapshot': 'temporary snapshot',
    'volume': 'temporary volume',
    'image': 'upload that never got its record',
    'root': 'Nova root snapshot of a server run that did not finish',
    'nova': "Nova's createImage image of a volume-booted server (no "
            'data, names the snapshots of a server run)',
    'restore': 'target of a restore that did not finish',
}


@dataclass
class Leftover:
    kind: str  # one of KINDS
    id: str
    name: str | None
    status: str | None
    run_id: str
    created_at: str | None
    #: what it was for in its run
    what: str = ''
    #: what the CLI deletes it by, when not the ID (a secret's href)
    ref: str | None = None
    result: str = ''

    @property
    def remove_command(self) -> str:
        noun = waits.cli_noun(self.kind).split()
        return shell_command('openstack', *noun, 'delete', self.ref or self.id)


def _tag(name: str | None, kind: str, run_id: str | None) -> str | None:
    """The run ID in ``name`` if it is an osc-backup name of ``kind``
    ('tmp' or 'key') of the run asked for; else None."""
    tagged = tags.tagged_name(name)
    if tagged is None or tagged[0] != kind:
        return None
    if run_id is not None and tagged[1] != run_id:
        return None
    return tagged[1]


def _role(name: str, run_id: str) -> str:
    if name.startswith(tags.NOVA_SNAPSHOT_PREFIX):
        return "snapshot Nova's createImage made for a server run"
    rest = name[len(tags.TEMPORARY_PREFIX) + len(run_id) + 1:]
    role = rest.split('-of-', 1)[0]
    return ROLES.get(role, 'temporary resource')


def _metadata_agrees(metadata: dict[str, str] | None, run_id: str) -> bool:
    """A volume's or snapshot's own metadata must not name another run or
    tool (it may be missing: Cinder's backup restore replaces it)."""
    md = metadata or {}
    if md.get(records.TOOL, tags.TOOL) != tags.TOOL:
        return False
    return md.get(records.RUN_ID, run_id) == run_id


def _block_storage(conn: Any, run_id: str | None) -> Iterable[Leftover]:
    bs = conn.block_storage
    for kind, items in (
        ('volume', bs.volumes(details=True)),
        ('snapshot', bs.snapshots(details=True)),
    ):
        for res in items:
            name = res.name or ''
            if kind == 'snapshot' and name.startswith(
                tags.NOVA_SNAPSHOT_PREFIX
            ):
                # Nova's: "snapshot for <our temporary image name>"
                name = name[len(tags.NOVA_SNAPSHOT_PREFIX):]
            run = _tag(name, 'tmp', run_id)
            if run is None or not _metadata_agrees(res.metadata, run):
                continue
            yield Leftover(
                kind=kind, id=res.id, name=res.name, status=res.status,
                run_id=run, created_at=res.created_at,
                what=_role(res.name, run),
            )


def _images(images: list[Any], project: str | None, run_id: str | None
            ) -> Iterable[Leftover]:
    for image in images:
        run = _tag(image.name, 'tmp', run_id)
        if run is None or (project and image.owner != project):
            continue
        yield Leftover(
            kind='image', id=image.id, name=image.name, status=image.status,
            run_id=run, created_at=image.created_at,
            what=_role(image.name, run),
        )


def _secrets(conn: Any, images: list[Any], run_id: str | None
             ) -> Iterable[Leftover]:
    used = set()
    for image in images:
        props = dict(getattr(image, 'properties', None) or {})
        key = props.get(secrets.IMAGE_KEY_ID)
        if key:
            used.add(str(key).lower())
    for secret in conn.key_manager.secrets():
        run = _tag(secret.name, 'key', run_id)
        href = str(secret.secret_ref or secret.id)
        uuid = secrets.secret_uuid(href)
        if run is None or uuid is None or uuid in used:
            continue
        yield Leftover(
            kind='secret', id=uuid, name=secret.name,
            status=secret.status, run_id=run, created_at=secret.created_at,
            what='key stored for an image restore; no image uses it',
            ref=href,
        )


def _restored_by(record: dict[str, Any] | None, run_id: str) -> bool:
    """Metadata (or image properties) a restore of run ``run_id`` gave."""
    md = record or {}
    return (
        md.get(records.TOOL) == tags.TOOL
        and md.get(records.RUN_ID) == run_id
        and bool(md.get(records.RESTORED_FROM))
    )


def unfinished_restore(name: str | None, metadata: Any) -> str | None:
    """The run ID of a server ``backup server restore`` created and did
    not finish: its temporary name ``osc-backup-tmp-<run>-restore-of-...``
    *and* the metadata that restore gave it (the tool, that run, the
    restore mark). None for any other server: a user's server with a
    look-alike name lacks the metadata, a finished restore has its final
    name."""
    run = _tag(name, 'tmp', None)
    if run is None or not str(name).startswith(
        tags.Run(run_id=run).temporary_prefix(tags.RESTORE_ROLE)
    ):
        return None
    return run if _restored_by(dict(metadata or {}), run) else None


def _servers(
    conn: Any, project: str | None, run_id: str | None
) -> Iterable[Leftover]:
    """Servers of restores that did not finish, and what of theirs had
    its final name already."""
    for server in conn.compute.servers(details=True):
        run = unfinished_restore(server.name, server.metadata)
        if run is None or run_id not in (None, run):
            continue
        yield Leftover(
            kind='server', id=server.id, name=server.name,
            status=server.status, run_id=run, created_at=server.created_at,
            what='server of a restore that did not finish',
        )
        yield from _renamed_parts(conn, server, project, run)


def _renamed_parts(
    conn: Any, server: Any, project: str | None, run: str
) -> Iterable[Leftover]:
    what = 'renamed already by a server restore that did not finish'
    for attached in server.attached_volumes or []:
        try:
            vol = conn.block_storage.get_volume(attached['id'])
        except sdk_exc.NotFoundException:
            continue
        if tags.tagged_name(vol.name) is None and _restored_by(
            vol.metadata, run
        ):
            yield Leftover(
                kind='volume', id=vol.id, name=vol.name, status=vol.status,
                run_id=run, created_at=vol.created_at, what=what,
            )
    image_id = (server.image or {}).get('id')
    if not image_id:
        return
    try:
        image = conn.image.get_image(image_id)
    except sdk_exc.NotFoundException:
        return
    if (
        tags.tagged_name(image.name) is None
        and not (project and image.owner != project)
        and _restored_by(dict(image.properties or {}), run)
    ):
        yield Leftover(
            kind='image', id=image.id, name=image.name, status=image.status,
            run_id=run, created_at=image.created_at, what=what,
        )


def find_leftovers(
    conn: Any, run_id: str | None = None, reporter: Reporter | None = None
) -> list[Leftover]:
    """What interrupted osc-backup runs (or run ``run_id``) left in the
    current project, in removal order.

    A service that cannot be asked (e.g. no Key Manager in the cloud) is
    skipped with a warning.
    """
    found: list[Leftover] = []
    try:
        found += _servers(conn, conn.current_project_id, run_id)
    except Exception as exc:
        _skipped(reporter, 'servers (Nova)', exc)
    images: list[Any] = []
    try:
        images = list(conn.image.images())
    except Exception as exc:
        _skipped(reporter, 'images', exc)
    found += _images(images, conn.current_project_id, run_id)
    found += _block_storage(conn, run_id)
    # a key only images removed here refer to goes with them
    removed = {lo.id for lo in found if lo.kind == 'image'}
    try:
        found += _secrets(
            conn, [i for i in images if i.id not in removed], run_id
        )
    except Exception as exc:
        _skipped(reporter, 'secrets (Barbican)', exc)
    found.sort(key=lambda lo: KINDS.index(lo.kind))
    return found


def _skipped(reporter: Reporter | None, what: str, exc: Exception) -> None:
    LOG.debug('Cannot list %s', what, exc_info=True)
    if reporter is not None:
        reporter.warn(f'could not look for leftover {what}: {exc}')


def remove_leftovers(
    conn: Any,
    leftovers: list[Leftover],
    reporter: Reporter,
    *,
    interval: float | None = waits.DEFAULT_INTERVAL,
) -> list[Leftover]:
    """Delete them, in :data:`KINDS` order, each waited until gone; what
    failed is tried once more at the end (a volume cannot go while one of
    the snapshots removed after it still exists).

    Sets ``result`` on each; returns the ones that could not be removed.
    """
    failed = sorted(leftovers, key=lambda lo: KINDS.index(lo.kind))
    for _attempt in range(2):
        todo, failed = failed, []
        for lo in todo:
            reporter.step(f'Deleting {lo.kind} {lo.id}')
            try:
                _remove(conn, lo, interval)
                lo.result = 'deleted'
            except Exception as exc:
                LOG.debug('Removing %s %s failed', lo.kind, lo.id,
                          exc_info=True)
                lo.result = f'failed: {exc}'
                failed.append(lo)
        if not failed or len(failed) == len(todo):
            break
    return failed


def _remove(conn: Any, lo: Leftover, interval: float | None) -> None:
    if lo.kind == 'server':
        server_restore.delete_server(conn.compute, lo.id, interval=interval)
    elif lo.kind == 'volume':
        volumes.delete_volume(
            conn.block_storage, lo.id,
            step='delete leftover volume', interval=interval,
        )
    elif lo.kind == 'snapshot':
        volumes.delete_snapshot(
            conn.block_storage, lo.id,
            step='delete leftover snapshot', interval=interval,
        )
    elif lo.kind == 'image':
        # Glance deletes at once (no 'deleting' to wait out)
        conn.image.delete_image(lo.id, ignore_missing=True)
    else:
        secrets.delete_secret(conn, lo.id)
