"""The retention engine (osc_backup.common.retention), table-driven like
restic's snapshot policy tests."""

import datetime
import random
import zoneinfo

import testtools

from osc_backup.common import retention as r

UTC = datetime.UTC


def t(text):
    """'2026-03-31 12:00' (UTC) -> aware datetime."""
    return datetime.datetime.fromisoformat(text).replace(tzinfo=UTC)


def entries(*times, group='g'):
    """One entry per time, IDs e0 (first given) ... eN."""
    return [r.Entry(f'e{i}', group, t(x)) for i, x in enumerate(times)]


NOW = t('2026-06-15 12:00')


def decide(items, now=NOW, tz=UTC, **policy):
    return r.apply_policy(items, r.Policy(**policy), now=now, tz=tz)


def kept(decisions):
    return sorted(d.entry.id for d in decisions if d.keep)


def reasons(decisions):
    return {d.entry.id: d.reasons for d in decisions if d.keep}


class TestParseDuration(testtools.TestCase):
    VALID = [
        ('2w3d', r.Duration(weeks=2, days=3)),
        ('1y6m', r.Duration(years=1, months=6)),
        ('12h', r.Duration(hours=12)),
        ('3d2w', r.Duration(weeks=2, days=3)),
        ('1Y', r.Duration(years=1)),
        (' 7d ', r.Duration(days=7)),
        ('1y0m', r.Duration(years=1)),
        ('1y2m3w4d5h', r.Duration(1, 2, 3, 4, 5)),
    ]
    INVALID = [
        '', '2', 'd', '2x', '2w 3d', '-1d', '1.5d', '1d1d', '0d', '0y0h',
        '2 weeks', '1m30s',
    ]

    def test_valid(self):
        for text, expected in self.VALID:
            self.assertEqual(expected, r.parse_duration(text), text)

    def test_invalid(self):
        for text in self.INVALID:
            self.assertRaises(r.InvalidDuration, r.parse_duration, text)

    def test_str_round_trips(self):
        for text, expected in self.VALID:
            self.assertEqual(expected, r.parse_duration(str(expected)))
        self.assertEqual('2w3d', str(r.Duration(weeks=2, days=3)))

    def test_before(self):
        table = [
            ('2w3d', '2026-06-15 12:00', '2026-05-29 12:00'),
            ('12h', '2026-06-15 12:00', '2026-06-15 00:00'),
            ('1m', '2026-03-31 10:00', '2026-02-28 10:00'),  # clamped
            ('1m', '2024-03-31 10:00', '2024-02-29 10:00'),  # leap year
            ('1y', '2024-02-29 10:00', '2023-02-28 10:00'),
            ('1y6m', '2026-06-15 00:00', '2024-12-15 00:00'),
            ('13m', '2026-01-15 00:00', '2024-12-15 00:00'),
            ('1m1d', '2026-03-01 00:00', '2026-01-31 00:00'),
        ]
        for text, when, expected in table:
            self.assertEqual(
                t(expected), r.parse_duration(text).before(t(when)), text
            )


class TestPolicy(testtools.TestCase):
    def test_empty_policy_refused(self):
        for policy in (r.Policy(), r.Policy(within=r.Duration())):
            self.assertTrue(policy.is_empty())
            self.assertRaises(
                r.EmptyPolicy, r.apply_policy, entries('2026-01-01'),
                policy, now=NOW,
            )

    def test_empty_policy_refused_without_entries(self):
        self.assertRaises(r.EmptyPolicy, r.apply_policy, [], r.Policy(),
                          now=NOW)

    def test_negative_counts_refused(self):
        self.assertRaises(ValueError, r.Policy, daily=-2)

    def test_describe(self):
        self.assertEqual(
            'keep 3 last, all daily, within 2w',
            r.Policy(last=3, daily=r.ALL,
                     within=r.Duration(weeks=2)).describe(),
        )

    def test_naive_times_refused(self):
        self.assertRaises(ValueError, r.Entry, 'x', 'g',
                          datetime.datetime(2026, 1, 1))
        self.assertRaises(ValueError, r.apply_policy, [], r.Policy(last=1),
                          now=datetime.datetime(2026, 1, 1))

    def test_duplicate_ids_refused(self):
        e = entries('2026-01-01')[0]
        self.assertRaises(ValueError, r.apply_policy, [e, e],
                          r.Policy(last=1), now=NOW)


# one group, one backup a day at 10:00 from 2026-01-01 to 2026-03-31 (90),
# plus a second one at 22:00 on the first of each month
DAYS = [
    (datetime.datetime(2026, 1, 1, 10, tzinfo=UTC)
     + datetime.timedelta(days=n)) for n in range(90)
] + [datetime.datetime(2026, m, 1, 22, tzinfo=UTC) for m in (1, 2, 3)]
SERIES = [r.Entry(d.strftime('%m%d-%H'), 'g', d) for d in DAYS]
SERIES_NOW = t('2026-03-31 23:00')


class TestCalendarRules(testtools.TestCase):
    """(policy, the IDs kept) over SERIES (newest: 0331-10)."""

    TABLE = [
        (dict(last=3), ['0331-10', '0330-10', '0329-10']),
        (dict(daily=3), ['0331-10', '0330-10', '0329-10']),
        # 2026-03-31 is a Tuesday; ISO weeks start on Monday
        (dict(weekly=3), ['0331-10', '0329-10', '0322-10']),
        # the newest of March 1 is the 22:00 one
        (dict(daily=32), [
            f'03{d:02d}-10' for d in range(2, 32)
        ] + ['0301-22', '0228-10']),
        # the newest of each month: Feb has 28 days
        (dict(monthly=3), ['0331-10', '0228-10', '0131-10']),
        # fewer months than asked: the oldest is kept too
        (dict(monthly=6), ['0331-10', '0228-10', '0131-10', '0101-10']),
        (dict(yearly=1), ['0331-10']),
        (dict(yearly=5), ['0331-10', '0101-10']),
        (dict(hourly=2), ['0331-10', '0330-10']),
        # rules overlap: the union
        (dict(daily=2, weekly=2, monthly=2),
         ['0331-10', '0330-10', '0329-10', '0228-10']),
        (dict(last=1, monthly=2), ['0331-10', '0228-10']),
        # within counts from now (2026-03-31 23:00)
        (dict(within=r.Duration(days=2)), ['0331-10', '0330-10']),
        (dict(within=r.Duration(weeks=1)),
         [f'03{d:02d}-10' for d in range(25, 32)]),
    ]

    def test_table(self):
        for policy, expected in self.TABLE:
            got = kept(decide(SERIES, now=SERIES_NOW, **policy))
            self.assertEqual(sorted(expected), got, policy)

    def test_input_order_does_not_matter(self):
        shuffled = list(SERIES)
        random.Random(4).shuffle(shuffled)
        for policy, expected in self.TABLE:
            got = kept(decide(shuffled, now=SERIES_NOW, **policy))
            self.assertEqual(sorted(expected), got, policy)

    def test_all_keeps_every_bucket(self):
        # as restic: a count left over keeps the oldest too
        got = reasons(decide(SERIES, now=SERIES_NOW, monthly=r.ALL))
        self.assertEqual(['0101-10', '0131-10', '0228-10', '0331-10'],
                         sorted(got))
        self.assertEqual(['monthly (oldest)'], got['0101-10'])
        got = kept(decide(SERIES, now=SERIES_NOW, daily=r.ALL))
        self.assertEqual(91, len(got))
        self.assertNotIn('0301-10', got)  # the 22:00 one is the daily

    def test_reasons_list_every_rule(self):
        got = reasons(decide(SERIES, now=SERIES_NOW, last=1, daily=2,
                             weekly=1, monthly=2))
        self.assertEqual(
            ['newest', 'last', 'daily', 'weekly', 'monthly'],
            got['0331-10'],
        )
        self.assertEqual(['daily'], got['0330-10'])
        self.assertEqual(['monthly'], got['0228-10'])

    def test_oldest_reason(self):
        got = reasons(decide(SERIES, now=SERIES_NOW, monthly=6))
        self.assertEqual(['monthly (oldest)'], got['0101-10'])

    def test_days_without_backups_do_not_count(self):
        items = entries('2026-03-01 10:00', '2026-03-05 10:00',
                        '2026-03-20 10:00', '2026-03-20 11:00')
        self.assertEqual(['e1', 'e3'], kept(decide(items, daily=2)))

    def test_fewer_entries_than_last(self):
        items = entries('2026-03-01', '2026-03-02')
        got = reasons(decide(items, last=5))
        self.assertEqual(['last'], got['e0'])
        self.assertEqual(['newest', 'last'], got['e1'])


class TestBucketEdges(testtools.TestCase):
    def test_day_edge(self):
        items = entries('2026-03-01 23:59:59', '2026-03-02 00:00:00')
        self.assertEqual(['e0', 'e1'], kept(decide(items, daily=2)))

    def test_hour_edge(self):
        items = entries('2026-03-01 09:59:59', '2026-03-01 10:00:00',
                        '2026-03-01 10:59:59')
        self.assertEqual(['e0', 'e2'], kept(decide(items, hourly=2)))

    def test_iso_week_edge(self):
        # Sunday 2026-01-04 is ISO week 1, Monday 2026-01-05 week 2
        items = entries('2026-01-04 23:00', '2026-01-05 01:00')
        self.assertEqual(['e0', 'e1'], kept(decide(items, weekly=2)))

    def test_iso_week_across_new_year(self):
        # 2026-12-31 (Thu) and 2027-01-03 (Sun) are both 2026-W53
        items = entries('2026-12-31 10:00', '2027-01-03 10:00',
                        '2027-01-04 10:00', '2026-12-28 09:00')
        got = kept(decide(items, now=t('2027-01-05'), weekly=2))
        self.assertEqual(['e1', 'e2'], got)
        # ... but different years
        got = kept(decide(items, now=t('2027-01-05'), yearly=2))
        self.assertEqual(['e0', 'e2'], got)

    def test_month_ends(self):
        items = entries('2026-01-31 23:00', '2026-02-01 00:00',
                        '2026-02-28 23:00', '2026-03-01 00:00',
                        '2024-02-29 12:00')
        got = kept(decide(items, now=t('2026-03-02'), monthly=3))
        self.assertEqual(['e0', 'e2', 'e3'], got)
        got = kept(decide(items, now=t('2026-03-02'), monthly=r.ALL))
        self.assertEqual(['e0', 'e2', 'e3', 'e4'], got)

    def test_equal_timestamps(self):
        a = r.Entry('aaa', 'g', t('2026-03-01 10:00'))
        b = r.Entry('bbb', 'g', t('2026-03-01 10:00'))
        for items in ([a, b], [b, a]):
            got = reasons(decide(items, daily=1))
            self.assertEqual({'bbb': ['newest', 'daily']}, got)
        # keep-last 1 with two equal times keeps exactly one
        self.assertEqual(['bbb'], kept(decide([a, b], last=1)))

    def test_within_boundary_is_exclusive(self):
        items = entries('2026-06-01 12:00', '2026-06-01 12:00:01',
                        '2026-05-01 00:00')
        got = kept(decide(items, within=r.parse_duration('2w')))
        self.assertEqual(['e1'], got)

    def test_within_counts_from_now_not_from_newest(self):
        # nothing newer than 2 weeks: only the newest stays (as newest)
        items = entries('2026-01-01', '2026-01-02', '2026-01-03')
        got = reasons(decide(items, within=r.parse_duration('2w')))
        self.assertEqual({'e2': ['newest']}, got)

    def test_future_entries_are_within(self):
        items = entries('2026-06-20 00:00', '2026-06-14 00:00',
                        '2026-01-01 00:00')
        got = kept(decide(items, within=r.parse_duration('2d')))
        self.assertEqual(['e0', 'e1'], got)


class TestTimeZones(testtools.TestCase):
    SYDNEY = zoneinfo.ZoneInfo('Australia/Sydney')  # UTC+11 in January

    def test_day_cut_in_utc_by_default(self):
        # 12:30Z and 13:30Z: one UTC day; 23:30 and 00:30 in Sydney
        items = entries('2026-01-08 10:00', '2026-01-10 12:30',
                        '2026-01-10 13:30')
        self.assertEqual(['e0', 'e2'], kept(decide(items, daily=2)))
        self.assertEqual(['e1', 'e2'],
                         kept(decide(items, daily=2, tz=self.SYDNEY)))

    def test_month_cut_in_zone(self):
        # 2026-01-31 14:00Z is 2026-02-01 01:00 in Sydney
        items = entries('2025-12-15 10:00', '2026-01-31 12:00',
                        '2026-01-31 14:00')
        self.assertEqual(['e0', 'e2'], kept(decide(items, monthly=2)))
        self.assertEqual(['e1', 'e2'],
                         kept(decide(items, monthly=2, tz=self.SYDNEY)))

    def test_entries_in_other_zones_compare_by_instant(self):
        plus2 = datetime.timezone(datetime.timedelta(hours=2))
        a = r.Entry('a', 'g', datetime.datetime(2026, 3, 2, 1, tzinfo=plus2))
        b = r.Entry('b', 'g', t('2026-03-01 22:00'))
        c = r.Entry('c', 'g', t('2026-02-01 22:00'))
        # a is 2026-03-01 23:00 UTC: same UTC day, and newer than b
        self.assertEqual(['a', 'c'], kept(decide([a, b, c], daily=2)))


class TestGroups(testtools.TestCase):
    def test_counted_per_group(self):
        items = [
            *entries('2026-03-01', '2026-03-02', '2026-03-03', group='a'),
            r.Entry('b0', 'b', t('2026-01-01')),
            r.Entry('b1', 'b', t('2026-01-02')),
        ]
        got = kept(decide(items, last=2))
        self.assertEqual(['b0', 'b1', 'e1', 'e2'], got)

    def test_newest_of_every_group_kept(self):
        items = [r.Entry('old', 'a', t('2020-01-01')),
                 r.Entry('new', 'b', t('2026-06-01')),
                 r.Entry('newer', 'b', t('2026-06-10'))]
        got = reasons(decide(items, within=r.parse_duration('1w')))
        self.assertEqual({'old': ['newest'], 'newer': ['newest', 'within 1w']},
                         got)

    def test_order_newest_group_first(self):
        items = [r.Entry('a0', 'a', t('2026-01-01')),
                 r.Entry('b0', 'b', t('2026-02-01')),
                 r.Entry('a1', 'a', t('2026-01-02'))]
        got = [d.entry.id for d in decide(items, last=1)]
        self.assertEqual(['b0', 'a1', 'a0'], got)

    def test_tuple_groups(self):
        items = [r.Entry('x', ('vol1', 'image'), t('2026-01-01')),
                 r.Entry('y', ('vol1', 'backup'), t('2026-01-02'))]
        self.assertEqual(['x', 'y'], kept(decide(items, last=1)))


def chain():
    """full <- inc1 <- inc2 (one volume), and an older full0 <- inc0."""
    return [
        r.Entry('full0', 'v', t('2026-01-01 10:00')),
        r.Entry('inc0', 'v', t('2026-01-02 10:00'), depends_on=('full0',)),
        r.Entry('full', 'v', t('2026-02-01 10:00')),
        r.Entry('inc1', 'v', t('2026-02-02 10:00'), depends_on=('full',)),
        r.Entry('inc2', 'v', t('2026-02-03 10:00'), depends_on=('inc1',)),
    ]


class TestChains(testtools.TestCase):
    def test_bases_of_kept_are_kept(self):
        got = reasons(decide(chain(), last=1))
        self.assertEqual({
            'inc2': ['newest', 'last'],
            'inc1': ['base of inc2'],
            'full': ['base of inc1'],
        }, got)

    def test_base_kept_by_rule_gets_both_reasons(self):
        got = reasons(decide(chain(), last=2))
        self.assertEqual(['last', 'base of inc2'], got['inc1'])

    def test_old_chain_deleted_whole(self):
        ds = decide(chain(), last=1)
        order = [e.id for e in r.deletion_order(ds)]
        self.assertEqual(['inc0', 'full0'], order)

    def test_kept_old_incremental_keeps_its_base(self):
        got = reasons(decide(chain(), monthly=2))
        self.assertEqual(['monthly'], got['inc0'])
        self.assertEqual(['base of inc0'], got['full0'])

    def test_hold(self):
        items = chain()
        items[0] = r.Entry('full0', 'v', t('2026-01-01 10:00'),
                           hold='has dependents not made by osc-backup')
        got = reasons(decide(items, last=1))
        self.assertEqual(['has dependents not made by osc-backup'],
                         got['full0'])
        self.assertNotIn('inc0', got)

    def test_not_counted(self):
        items = chain()
        items.append(r.Entry('inc3', 'v', t('2026-02-04 10:00'),
                             depends_on=('inc2',), hold='incomplete',
                             counted=False))
        got = reasons(decide(items, last=1))
        self.assertEqual({
            'inc3': ['incomplete'],
            'inc2': ['newest', 'last', 'base of inc3'],
            'inc1': ['base of inc2'],
            'full': ['base of inc1'],
        }, got)

    def test_only_uncounted(self):
        e = r.Entry('x', 'v', t('2026-01-01'), hold='incomplete',
                    counted=False)
        self.assertEqual({'x': ['incomplete']}, reasons(decide([e], last=1)))

    def test_missing_base_ignored(self):
        items = [r.Entry('inc', 'v', t('2026-01-02'), depends_on=('gone',))]
        self.assertEqual(['inc'], kept(decide(items, last=1)))

    def test_bases_across_groups(self):
        items = [r.Entry('full', 'a', t('2026-01-01')),
                 r.Entry('x', 'a', t('2026-01-03')),
                 r.Entry('inc', 'b', t('2026-01-02'), depends_on=('full',))]
        got = reasons(decide(items, last=1))
        self.assertEqual(['base of inc'], got['full'])


class TestDeletionOrder(testtools.TestCase):
    def test_newest_incremental_first(self):
        items = [*chain(), r.Entry('full9', 'v', t('2026-03-01 10:00'))]
        ds = decide(items, last=1)
        order = [e.id for e in r.deletion_order(ds)]
        self.assertEqual(['inc2', 'inc1', 'full', 'inc0', 'full0'], order)

    def test_dependents_first_even_with_odd_clocks(self):
        # an incremental recorded as older than its base
        items = [
            r.Entry('base', 'v', t('2026-01-02')),
            r.Entry('inc', 'v', t('2026-01-01'), depends_on=('base',)),
            r.Entry('new', 'v', t('2026-02-01')),
        ]
        ds = decide(items, last=1)
        self.assertEqual(['inc', 'base'],
                         [e.id for e in r.deletion_order(ds)])

    def test_equal_times(self):
        items = [
            r.Entry('b', 'v', t('2026-01-01')),
            r.Entry('a', 'v', t('2026-01-01'), depends_on=('b',)),
            r.Entry('new', 'v', t('2026-02-01')),
        ]
        ds = decide(items, last=1)
        self.assertEqual(['a', 'b'], [e.id for e in r.deletion_order(ds)])

    def test_only_deleted(self):
        ds = decide(chain(), last=r.ALL)
        self.assertEqual([], r.deletion_order(ds))

    def test_cycle_refused(self):
        items = [
            r.Entry('a', 'v', t('2026-01-01'), depends_on=('b',)),
            r.Entry('b', 'v', t('2026-01-02'), depends_on=('a',)),
        ]
        ds = [r.Decision(e) for e in items]
        self.assertRaises(ValueError, r.deletion_order, ds)
