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

"""The planning core of the coming ``backup run`` (issue 14): which
resources a run backs up, which of them one shard takes, the plan a
``--dry-run`` shows, and the report model with its exit-code rule.

* :func:`select`: the selection (``--volume``, ``--server``,
  ``--all-volumes``, ``--all-servers``, ``--property``, ``--exclude``),
  deduplicated by ID. A selected volume attached to a selected server is
  folded into that server (backed up once, as part of it).
* :func:`parse_shard` / :func:`shard_of` / :func:`take_shard`: a stable
  partition by resource ID (SHA-256 of the ID modulo N), identical on
  every machine and Python process.
* :func:`plan`: one ``planned`` row per resource, with the method and why.
* :class:`ResourceResult`, :func:`summarize`, :func:`exit_code`: the rows
  and summary a run reports.

Nothing here creates or changes anything in the cloud. Plain module:
takes an openstacksdk ``Connection`` where it must look up or list; no
cliff.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from keystoneauth1 import exceptions as ksa_exc
from openstack import exceptions as sdk_exc

from osc_backup.common import errors
from osc_backup.common import tags
from osc_backup.common import volumes
from osc_backup.common.text import printable
from osc_backup.procedures import server_plan
from osc_backup.procedures import volume_choice

VOLUME = 'volume'
SERVER = 'server'

OK = 'ok'
FAILED = 'failed'
SKIPPED = 'skipped'
PLANNED = 'planned'
RESULTS = (OK, FAILED, SKIPPED, PLANNED)

#: exit codes of ``backup run``: every resource ok (or planned) / any
#: resource failed or skipped / bad input (InvalidInput, nothing started)
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2

COLUMNS = ('Resource', 'Type', 'Name', 'Result', 'Method', 'Backup',
           'Bytes', 'Duration', 'Error')


# -- selection -----------------------------------------------------------
@dataclass
class Criteria:
    """What the user selected (the options of ``backup run``)."""

    volumes: list[str] = field(default_factory=list)
    servers: list[str] = field(default_factory=list)
    all_volumes: bool = False
    all_servers: bool = False
    #: select every volume and server whose metadata has all these pairs
    properties: dict[str, str] = field(default_factory=dict)
    exclude: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.volumes or self.servers or self.all_volumes
                    or self.all_servers or self.properties)


@dataclass
class Target:
    """One resource a run backs up."""

    kind: str
    resource: Any
    #: a server: IDs of selected volumes backed up as part of it
    folded: list[str] = field(default_factory=list)
    #: a volume: the method chosen by :func:`plan`
    choice: volume_choice.Choice | None = None

    @property
    def id(self) -> str:
        return str(self.resource.id)

    @property
    def name(self) -> str:
        return self.resource.name or ''

    def label(self) -> str:
        """``kind ID (name)`` for messages, control characters escaped."""
        if self.kind == SERVER:
            return f'server {server_plan.server_label(self.resource)}'
        return f'volume {volumes.volume_label(self.resource)}'


@dataclass
class Selection:
    """The resources of a run, servers first, each kind by name and ID."""

    targets: list[Target]
    #: what the user should know (folded volumes, unmatched excludes...),
    #: names escaped
    notes: list[str] = field(default_factory=list)


def _matches(metadata: dict[str, Any] | None, wanted: dict[str, str]) -> bool:
    md = metadata or {}
    return all(k in md and str(md[k]) == v for k, v in wanted.items())


def _ids(attachments: Iterable[Any] | None, key: str) -> list[str]:
    """The ``key`` of each attachment (dicts or SDK resources)."""
    return [str(a.get(key)) for a in attachments or [] if a.get(key)]


def _attached_servers(volume: Any) -> list[str]:
    """IDs of the servers ``volume`` is attached to (Cinder's view)."""
    return _ids(getattr(volume, 'attachments', None), 'server_id')


def _attached_volumes(server: Any) -> list[str]:
    """IDs of the volumes attached to ``server`` (Nova's view)."""
    return _ids(getattr(server, 'attached_volumes', None), 'id')


def _list_servers(conn: Any, required: bool) -> list[Any] | None:
    """Every server of the project (one paginated listing); None when the
    cloud has no compute service and servers are not ``required``."""
    try:
        return list(conn.compute.servers(details=True))
    except (sdk_exc.EndpointNotFound, ksa_exc.EndpointNotFound):
        if not required:
            return None
        raise errors.InvalidInput(
            'This cloud has no compute (Nova) service in its catalog: '
            'there are no servers to back up.'
        ) from None


def _exclude(
    token: str, candidates: dict[str, Target], notes: list[str]
) -> list[str]:
    """IDs of the candidates ``token`` (an ID or a name) excludes."""
    if token in candidates:
        return [token]
    named = [t for t in candidates.values() if t.resource.name == token]
    if len(named) > 1:
        which = ', '.join(t.label() for t in named)
        raise errors.InvalidInput(
            f"--exclude '{printable(token)}' names more than one selected "
            f'resource ({which}): use its ID.'
        )
    if not named:
        notes.append(
            f"--exclude '{printable(token)}': no selected volume or server "
            'has this name or ID; nothing excluded by it.'
        )
    return [t.id for t in named]


def check_criteria(criteria: Criteria) -> None:
    """:raises errors.InvalidInput: nothing selected (checked before any
    request)."""
    if criteria.empty():
        raise errors.InvalidInput(
            'Nothing selected: give --volume, --server, --all-volumes, '
            '--all-servers or --property.'
        )


def select(conn: Any, criteria: Criteria) -> Selection:
    """Resolve ``criteria`` into the resources of a run.

    Named resources are looked up one by one (name or ID, one clear error);
    ``--all-*`` and ``--property`` read one listing per kind, shared.
    osc-backup's own temporary volumes (of runs in progress) are never
    picked from a listing. ``--property`` pairs must all match (volume
    metadata, server metadata); it adds to the other selectors. Excludes
    match a selected resource by ID, else by name.

    A selected volume attached to a selected server is dropped from the
    volumes and recorded in the server's :attr:`Target.folded`: the
    server's backup covers it. Excluding such a volume is an error (a
    server backup cannot leave one volume out).

    :raises errors.InvalidInput: nothing selected, a name not found or
        ambiguous, an excluded volume that a selected server covers.
    """
    check_criteria(criteria)
    notes: list[str] = []
    servers: dict[str, Any] = {}
    vols: dict[str, Any] = {}
    for name_or_id in criteria.servers:
        server = server_plan.find_server(conn, name_or_id)
        servers[server.id] = server
    for name_or_id in criteria.volumes:
        volume = volumes.find_volume(conn.block_storage, name_or_id)
        vols[volume.id] = volume

    if criteria.all_servers or criteria.properties:
        listed = _list_servers(conn, required=criteria.all_servers)
        if listed is None:
            notes.append(
                'This cloud has no compute (Nova) service: --property '
                'selects volumes only.'
            )
        for server in listed or []:
            if criteria.all_servers or (
                _matches(server.metadata, criteria.properties)
            ):
                servers.setdefault(server.id, server)
    if criteria.all_volumes or criteria.properties:
        temporaries = 0
        for volume in conn.block_storage.volumes(details=True):
            if tags.is_temporary(volume.metadata):
                temporaries += 1
                continue
            if criteria.all_volumes or (
                _matches(volume.metadata, criteria.properties)
            ):
                vols.setdefault(volume.id, volume)
        if temporaries:
            notes.append(
                f'{temporaries} temporary volume(s) of osc-backup runs in '
                'progress are not selected.'
            )

    candidates = {
        s.id: Target(SERVER, s) for s in servers.values()
    }
    candidates.update({v.id: Target(VOLUME, v) for v in vols.values()})
    excluded: set[str] = set()
    for token in criteria.exclude:
        excluded.update(_exclude(token, candidates, notes))

    kept_servers = {
        t.id: t for t in candidates.values()
        if t.kind == SERVER and t.id not in excluded
    }
    # Nova's view of a server's volumes, joined with Cinder's of a volume
    covering: dict[str, list[str]] = {}
    for server_id, target in kept_servers.items():
        for volume_id in _attached_volumes(target.resource):
            covering.setdefault(volume_id, []).append(server_id)
    kept_volumes: list[Target] = []
    for target in candidates.values():
        if target.kind != VOLUME:
            continue
        owners = list(covering.get(target.id, []))
        owners += [
            s for s in _attached_servers(target.resource)
            if s in kept_servers and s not in owners
        ]
        owners.sort()
        if target.id in excluded:
            if owners:
                raise errors.InvalidInput(
                    f'--exclude: {target.label()} is attached to selected '
                    f'{kept_servers[owners[0]].label()}, whose backup '
                    'includes its attached volumes; exclude that server '
                    'too, or do not exclude this volume.'
                )
            continue
        if owners:
            owner = kept_servers[owners[0]]
            owner.folded.append(target.id)
            notes.append(
                f'{target.label()} is attached to {owner.label()}: it is '
                'backed up once, as part of that server.'
            )
            continue
        kept_volumes.append(target)

    def order(target: Target) -> tuple[str, str]:
        return (target.name, target.id)

    targets = sorted(kept_servers.values(), key=order)
    targets += sorted(kept_volumes, key=order)
    for target in targets:
        target.folded.sort()
    return Selection(targets, notes)


# -- sharding -----------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (``--shard I/N``)."""

    index: int
    count: int

    def __str__(self) -> str:
        return f'{self.index}/{self.count}'

    def holds(self, resource_id: str) -> bool:
        return shard_of(resource_id, self.count) == self.index


_SHARD = re.compile(r'([0-9]+)/([0-9]+)', re.ASCII)


def parse_shard(text: str) -> Shard:
    """``'I/N'`` -> :class:`Shard`; I from 0 to N-1.

    :raises errors.InvalidInput: anything else, with what is expected.
    """
    match = _SHARD.fullmatch(text.strip())
    if match is None:
        raise errors.InvalidInput(
            f"--shard '{printable(text)}': expected I/N, two whole numbers "
            'with I from 0 to N-1 (e.g. 0/3, 1/3 and 2/3 for three '
            'shards).'
        )
    index, count = int(match[1]), int(match[2])
    if count < 1:
        raise errors.InvalidInput(
            f"--shard '{printable(text)}': the number of shards N must be "
            'at least 1.'
        )
    if index >= count:
        raise errors.InvalidInput(
            f"--shard '{printable(text)}': the shard index I counts from 0 "
            f'to N-1 (0 to {count - 1} here).'
        )
    return Shard(index, count)


def shard_of(resource_id: str, count: int) -> int:
    """The shard (0 to ``count``-1) of a resource: SHA-256 of its ID
    (UTF-8) read as one big-endian integer, modulo ``count``. Never
    Python's ``hash()``, which is salted per process."""
    digest = hashlib.sha256(resource_id.encode('utf-8')).digest()
    return int.from_bytes(digest, 'big') % count


def take_shard(targets: Iterable[Target], shard: Shard | None) -> list[Target]:
    """The targets of ``shard`` (all of them when None), order kept.

    A server's folded volumes go with the server: shard after
    :func:`select`, never before.
    """
    if shard is None:
        return list(targets)
    return [t for t in targets if shard.holds(t.id)]


# -- the report model ----------------------------------------------------
@dataclass
class ResourceResult:
    """One row of the report of ``backup run`` (or of its plan).

    ``name`` is the cloud's, as it is: the command layer escapes control
    characters in table output (``command._escaped``) and JSON/YAML
    escape them themselves.
    """

    resource: str
    type: str
    name: str
    result: str
    method: str
    #: why this method (the plan's and the procedure's method_reason)
    reason: str = ''
    backups: list[str] = field(default_factory=list)
    size_bytes: int | None = None
    #: seconds
    duration: float | None = None
    error: str = ''
    #: --then-prune: the backups of this source deleted after its backup
    pruned: list[str] = field(default_factory=list)
    #: --then-prune: why pruning this source failed (the backup is ok)
    prune_error: str = ''

    def __post_init__(self) -> None:
        if self.result not in RESULTS:
            raise ValueError(f'not a result: {self.result!r}')

    def row(self) -> tuple[Any, ...]:
        """The values of :data:`COLUMNS`."""
        return (
            self.resource, self.type, self.name, self.result, self.method,
            list(self.backups), self.size_bytes,
            None if self.duration is None else round(self.duration, 1),
            self.error,
        )


def result_for(
    target: Target, result: str, *, method: str | None = None,
    reason: str = '', backups: Sequence[str] = (),
    size_bytes: int | None = None, duration: float | None = None,
    error: BaseException | str | None = None,
) -> ResourceResult:
    """A row for ``target``; an exception becomes one line
    (:func:`errors.describe`)."""
    if isinstance(error, BaseException):
        error = errors.describe(error)
    if method is None:
        method = target.choice.method if target.choice else volume_choice.AUTO
    return ResourceResult(
        resource=target.id, type=target.kind, name=target.name,
        result=result, method=method, reason=reason,
        backups=list(backups), size_bytes=size_bytes, duration=duration,
        error=error or '',
    )


@dataclass
class Summary:
    total: int
    ok: int
    failed: int
    skipped: int
    planned: int
    size_bytes: int
    #: wall time of the run in seconds (not the sum of the rows')
    duration: float

    def line(self) -> str:
        """e.g. ``4 resources: 3 ok, 1 failed, 0 skipped; 3221225472
        bytes in 52.0 s``."""
        if self.planned == self.total:
            return f'{self.total} resource(s) planned, nothing started.'
        return (
            f'{self.total} resource(s): {self.ok} ok, {self.failed} failed, '
            f'{self.skipped} skipped; {self.size_bytes} bytes in '
            f'{self.duration:.1f} s'
        )


def summarize(results: Sequence[ResourceResult], duration: float) -> Summary:
    count = {r: sum(1 for x in results if x.result == r) for r in RESULTS}
    return Summary(
        total=len(results), ok=count[OK], failed=count[FAILED],
        skipped=count[SKIPPED], planned=count[PLANNED],
        size_bytes=sum(r.size_bytes or 0 for r in results),
        duration=duration,
    )


def exit_code(results: Sequence[ResourceResult]) -> int:
    """:data:`EXIT_OK` when every resource is ok (or planned: a dry run),
    including an empty shard; :data:`EXIT_FAILED` when any failed or was
    skipped, or its ``--then-prune`` failed. Bad input never gets here:
    it is an ``InvalidInput`` raised by :func:`select`,
    :func:`parse_shard` or :func:`plan` before anything starts
    (:data:`EXIT_INVALID`, the command's business); an interrupted run
    ends with 128 + the signal (the command's business too).
    """
    if all(
        r.result in (OK, PLANNED) and not r.prune_error for r in results
    ):
        return EXIT_OK
    return EXIT_FAILED


# -- the plan ------------------------------------------------------------
SERVER_REASON = (
    'the server procedure decides per disk: root disk of an image-booted '
    'server by Nova createImage, each attached volume by the volume choice'
)


def plan(
    conn: Any,
    targets: Sequence[Target],
    requested: str = volume_choice.AUTO,
    *,
    image_only: list[str] | None = None,
    backup_only: list[str] | None = None,
    probe: bool = False,
) -> list[ResourceResult]:
    """Choose each volume's method (:func:`volume_choice.choose`, without
    its side-effecting probe) and return one ``planned`` row per target.

    The automatic choice depends only on the volume's availability zone,
    so it is asked once per zone; every volume gets its own copy of the
    :class:`volume_choice.Choice` (in :attr:`Target.choice`), which the run
    passes to ``volume_choice.backup_volume``. With ``probe`` (a real run,
    not ``--dry-run``) the choice may probe the cloud
    (:func:`volume_backup.detect`), and the volumes of one zone share one
    ``Choice``: a fall-back to the image path that one of them learns
    applies to the others. Servers get ``requested``:
    their plan (``server_plan.prepare``) needs requests per server and is
    made when they run.

    :raises errors.InvalidInput: e.g. backup-only options and no backup
        service; nothing was created.
    """
    if requested not in (
        volume_choice.AUTO, volume_choice.IMAGE, volume_choice.BACKUP
    ):
        raise errors.InvalidInput(f"Unknown method '{printable(requested)}'.")
    by_zone: dict[str | None, volume_choice.Choice] = {}
    rows = []
    for target in targets:
        if target.kind == SERVER:
            reason = SERVER_REASON
            if requested != volume_choice.AUTO:
                reason += f' (volumes requested with --via-{requested})'
            if target.folded:
                reason += (
                    '; includes selected volume(s) '
                    + ', '.join(target.folded)
                )
            rows.append(result_for(
                target, PLANNED, method=requested, reason=reason,
            ))
            continue
        zone = getattr(target.resource, 'availability_zone', None)
        if zone not in by_zone:
            by_zone[zone] = volume_choice.choose(
                conn, target.resource, requested, image_only=image_only,
                backup_only=backup_only, probe=probe,
            )
        choice = by_zone[zone] if probe else dataclasses.replace(
            by_zone[zone], backup_only=list(by_zone[zone].backup_only)
        )
        target.choice = choice
        rows.append(result_for(target, PLANNED, reason=choice.reason))
    return rows
