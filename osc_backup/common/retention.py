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

"""Retention rules (``backup prune``): which backups to keep, and why.

Pure: entries in, decisions out; no SDK, no cliff, no clock of its own
(``now`` is an argument). The rules are restic's ``forget`` rules, with
restic's semantics where users know them:

* ``last N`` keeps the N newest entries of a group;
* ``hourly/daily/weekly/monthly/yearly N`` keep the **newest entry of each
  calendar bucket** (hour, day, ISO week, month, year) for the newest N
  buckets that hold an entry (empty buckets do not count). Rules overlap:
  one entry can be the daily, the weekly and the monthly at once;
* as newer restic does, when a group has fewer buckets than a rule asks
  for, the group's **oldest** entry is kept by that rule too (reason
  ``<rule> (oldest)``), which keeps the longest history the rule allows;
* ``within DURATION`` keeps every entry created after ``now - DURATION``;
* a count of :data:`ALL` (-1) means every bucket.

Decisions of our own, documented for users:

* **Durations count back from now** (the time of the run), not from the
  newest entry as restic does. The newest entry of every group is kept
  anyway (reason ``newest``), so a source that stopped being backed up
  never loses its last backup.
* **Calendar buckets are cut in UTC** by default (the cloud records UTC);
  the caller may pass another time zone (``backup prune --time-zone``),
  e.g. for a user whose "daily" should follow their own day.
* Entries with equal creation times are ordered by ID (descending), so the
  outcome never depends on the order the cloud listed them in.
* Months and years in durations are calendar months and years; a day that
  does not exist in the target month is clamped to its last day (31 March
  minus 1m is 28 or 29 February).
* Every entry a kept entry depends on is kept (reason ``base of <ID>``,
  naming the kept entry that depends on it directly), transitively: a
  chain is never broken. An entry may also be held from outside
  (:attr:`Entry.hold`, e.g. a backup with dependents we did not make);
  one that is not :attr:`Entry.counted` (an incomplete backup) is kept
  and ignored by every rule.
* No rule at all is refused (:class:`EmptyPolicy`): nothing is removed
  by accident.
* :func:`deletion_order` deletes dependents before what they depend on,
  newest first.
"""

from __future__ import annotations

import calendar
import datetime
import re
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field

#: a rule count that keeps every bucket
ALL = -1

#: the calendar rules, shortest period first (restic's order)
CALENDAR_RULES = ('hourly', 'daily', 'weekly', 'monthly', 'yearly')

REASON_NEWEST = 'newest'
REASON_BASE = 'base of {id}'


class EmptyPolicy(ValueError):
    """No rule was given: refusing to decide anything."""


class InvalidDuration(ValueError):
    """A duration that does not parse."""


# -- durations ----------------------------------------------------------------

_UNITS = {'y': 'years', 'm': 'months', 'w': 'weeks', 'd': 'days',
          'h': 'hours'}
_PART = re.compile(r'(\d+)([ymwdh])')


@dataclass(frozen=True)
class Duration:
    """A calendar duration: ``1y6m``, ``2w3d``, ``12h``."""

    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0
    hours: int = 0

    def __str__(self) -> str:
        text = ''.join(
            f'{getattr(self, name)}{unit}'
            for unit, name in _UNITS.items()
            if getattr(self, name)
        )
        return text or '0h'

    def is_zero(self) -> bool:
        return not (self.years or self.months or self.weeks or self.days
                    or self.hours)

    def before(self, when: datetime.datetime) -> datetime.datetime:
        """``when`` minus this duration (calendar months and years; a day
        past the end of the month is clamped to its last day)."""
        months = when.year * 12 + (when.month - 1) - (
            self.years * 12 + self.months
        )
        year, month = divmod(months, 12)
        month += 1
        day = min(when.day, calendar.monthrange(year, month)[1])
        moved = when.replace(year=year, month=month, day=day)
        return moved - datetime.timedelta(
            weeks=self.weeks, days=self.days, hours=self.hours
        )


def parse_duration(text: str) -> Duration:
    """``2w3d``, ``1y6m``, ``12h``: numbers with units y (years), m
    (months), w (weeks), d (days), h (hours), each unit at most once, in
    any order; at least one non-zero part.

    :raises InvalidDuration: naming what is wrong.
    """
    raw = (text or '').strip().lower()
    parts = _PART.findall(raw)
    if not raw or ''.join(n + u for n, u in parts) != raw:
        raise InvalidDuration(
            f"'{text}' is not a duration: use numbers with the units "
            'y (years), m (months), w (weeks), d (days), h (hours), '
            "e.g. 2w3d, 1y6m, 12h"
        )
    values: dict[str, int] = {}
    for number, unit in parts:
        name = _UNITS[unit]
        if name in values:
            raise InvalidDuration(
                f"'{text}' is not a duration: unit '{unit}' appears twice"
            )
        values[name] = int(number)
    duration = Duration(**values)
    if duration.is_zero():
        raise InvalidDuration(f"'{text}' is not a duration: it is zero")
    return duration


# -- policy -------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """What to keep; a count of 0 means the rule is not used."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration | None = None

    def __post_init__(self) -> None:
        for name in ('last', *CALENDAR_RULES):
            value = getattr(self, name)
            if value < ALL:
                raise ValueError(f'keep-{name} must be {ALL} or more')

    def is_empty(self) -> bool:
        return not (
            any(getattr(self, n) for n in ('last', *CALENDAR_RULES))
            or (self.within is not None and not self.within.is_zero())
        )

    def describe(self) -> str:
        """``keep 3 last, 7 daily, within 2w`` (for messages)."""
        parts = []
        for name in ('last', *CALENDAR_RULES):
            value = getattr(self, name)
            if value == ALL:
                parts.append(f'all {name}')
            elif value:
                parts.append(f'{value} {name}')
        if self.within is not None and not self.within.is_zero():
            parts.append(f'within {self.within}')
        return 'keep ' + ', '.join(parts) if parts else 'no rule'


# -- entries and decisions ----------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One unit a policy decides about (a backup, an image, a run)."""

    id: str
    #: entries with equal groups are counted together
    group: Hashable
    #: timezone-aware creation time
    created: datetime.datetime
    #: IDs of the entries this one needs (an incremental's base)
    depends_on: tuple[str, ...] = ()
    #: a reason, found outside the policy, to keep it whatever the rules
    hold: str | None = None
    #: False: kept (``hold``) but not counted by any rule, nor as the
    #: newest of its group (e.g. an incomplete backup)
    counted: bool = True

    def __post_init__(self) -> None:
        if self.created.tzinfo is None:
            raise ValueError(f'entry {self.id}: created time has no zone')


@dataclass
class Decision:
    entry: Entry
    keep: bool = False
    reasons: list[str] = field(default_factory=list)

    @property
    def action(self) -> str:
        return 'keep' if self.keep else 'delete'

    def add(self, reason: str) -> None:
        self.keep = True
        if reason not in self.reasons:
            self.reasons.append(reason)


def _buckets(
    tz: datetime.tzinfo,
) -> dict[str, Callable[[datetime.datetime], tuple[int, ...]]]:
    def hourly(d: datetime.datetime) -> tuple[int, ...]:
        d = d.astimezone(tz)
        return d.year, d.month, d.day, d.hour

    def daily(d: datetime.datetime) -> tuple[int, ...]:
        d = d.astimezone(tz)
        return d.year, d.month, d.day

    def weekly(d: datetime.datetime) -> tuple[int, ...]:
        iso = d.astimezone(tz).isocalendar()
        return iso.year, iso.week

    def monthly(d: datetime.datetime) -> tuple[int, ...]:
        d = d.astimezone(tz)
        return d.year, d.month

    def yearly(d: datetime.datetime) -> tuple[int, ...]:
        return (d.astimezone(tz).year,)

    return {'hourly': hourly, 'daily': daily, 'weekly': weekly,
            'monthly': monthly, 'yearly': yearly}


def newest_first(entries: Iterable[Entry]) -> list[Entry]:
    """Newest first; equal times by ID, descending (deterministic)."""
    return sorted(entries, key=lambda e: (e.created, e.id), reverse=True)


def _apply_group(
    entries: list[Entry], policy: Policy, now: datetime.datetime,
    tz: datetime.tzinfo,
) -> list[Decision]:
    everything = [Decision(e) for e in newest_first(entries)]
    for decision in everything:
        if decision.entry.hold:
            decision.add(decision.entry.hold)
        elif not decision.entry.counted:
            decision.add('not counted')
    decisions = [d for d in everything if d.entry.counted]
    if not decisions:
        return everything
    decisions[0].add(REASON_NEWEST)
    cutoff = None
    if policy.within is not None and not policy.within.is_zero():
        cutoff = policy.within.before(now)
    last_index = len(decisions) - 1
    # keep-last: every entry is its own bucket (restic's ``always``)
    rules: list[tuple[str, int, Callable[[Decision, int], Hashable]]] = [
        ('last', policy.last, lambda d, nr: nr),
    ]
    funcs = _buckets(tz)
    for name in CALENDAR_RULES:
        func = funcs[name]
        rules.append((
            name, getattr(policy, name),
            lambda d, nr, f=func: f(d.entry.created),  # type: ignore[misc]
        ))
    for name, count, bucket_of in rules:
        left = count
        previous: Hashable = object()
        for nr, decision in enumerate(decisions):
            if left == 0:
                break
            value = bucket_of(decision, nr)
            if value != previous:
                decision.add(name)
            elif nr == last_index:
                # fewer buckets than asked for: keep the oldest too
                decision.add(f'{name} (oldest)')
            else:
                continue
            previous = value
            if left > 0:
                left -= 1
    if cutoff is not None:
        for decision in decisions:
            if decision.entry.created > cutoff:
                decision.add(f'within {policy.within}')
    return everything


def _keep_bases(decisions: Sequence[Decision]) -> None:
    """Keep every entry a kept entry depends on, transitively."""
    by_id = {d.entry.id: d for d in decisions}
    todo = [d for d in decisions if d.keep]
    while todo:
        kept = todo.pop()
        for base_id in kept.entry.depends_on:
            base = by_id.get(base_id)
            if base is None:
                continue
            was_kept = base.keep
            base.add(REASON_BASE.format(id=kept.entry.id))
            if not was_kept:
                todo.append(base)


def apply_policy(
    entries: Iterable[Entry],
    policy: Policy,
    *,
    now: datetime.datetime,
    tz: datetime.tzinfo = datetime.UTC,
) -> list[Decision]:
    """Decide about every entry; per group, newest first (groups in the
    order of their newest entry, newest group first).

    Bases are kept across groups too (an entry may depend on one in
    another group when the caller groups that way).

    :raises EmptyPolicy: no rule given.
    """
    if policy.is_empty():
        raise EmptyPolicy(
            'no retention rule given: refusing to delete anything (give '
            'at least one --keep-* rule)'
        )
    if now.tzinfo is None:
        raise ValueError('now has no time zone')
    groups: dict[Hashable, list[Entry]] = {}
    seen: set[str] = set()
    for entry in entries:
        if entry.id in seen:
            raise ValueError(f'entry {entry.id} given twice')
        seen.add(entry.id)
        groups.setdefault(entry.group, []).append(entry)
    per_group = [
        _apply_group(members, policy, now, tz) for members in groups.values()
    ]
    per_group.sort(
        key=lambda ds: (ds[0].entry.created, ds[0].entry.id), reverse=True
    )
    decisions = [d for ds in per_group for d in ds]
    _keep_bases(decisions)
    return decisions


def deletion_order(decisions: Iterable[Decision]) -> list[Entry]:
    """The entries to delete, each before every entry it depends on;
    otherwise newest first (so the newest incremental goes first)."""
    doomed = {d.entry.id: d.entry for d in decisions if not d.keep}
    # how many doomed entries still depend on each doomed entry
    waiting: dict[str, int] = dict.fromkeys(doomed, 0)
    for entry in doomed.values():
        for base in set(entry.depends_on):
            if base in waiting:
                waiting[base] += 1
    order: list[Entry] = []
    ready = newest_first(e for e in doomed.values() if not waiting[e.id])
    while ready:
        entry = ready.pop(0)
        order.append(entry)
        freed = []
        for base in set(entry.depends_on):
            if base in waiting:
                waiting[base] -= 1
                if waiting[base] == 0:
                    freed.append(doomed[base])
        if freed:
            ready = newest_first([*ready, *freed])
    if len(order) != len(doomed):
        stuck = sorted(set(doomed) - {e.id for e in order})
        raise ValueError(f'dependency cycle among {", ".join(stuck)}')
    return order
