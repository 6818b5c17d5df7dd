"""backup list / show / delete / prune (osc_backup.v1.catalog)."""

import datetime

import fixtures
from openstack import exceptions as sdk_exc
from osc_lib import exceptions

from osc_backup.tests.unit import base
from osc_backup.tests.unit import fakes
from osc_backup.tests.unit.test_catalog import RUN
from osc_backup.tests.unit.test_catalog import VOL
from osc_backup.tests.unit.test_catalog import backup
from osc_backup.tests.unit.test_catalog import chain_backups
from osc_backup.tests.unit.test_catalog import image_body
from osc_backup.tests.unit.test_catalog import make_set
from osc_backup.tests.unit.test_catalog import record
from osc_backup.tests.unit.test_catalog import two_image_bodies
from osc_backup.v1 import catalog


def rows_of(headers, rows):
    out = []
    for row in rows:
        item = {}
        for h, v in zip(headers, row):
            item[h] = v.machine_readable() if hasattr(
                v, 'machine_readable') else v
        out.append(item)
    return out


class CatalogCommandCase(base.TestCommand):
    def setUp(self):
        super().setUp()
        self.images = [
            *two_image_bodies(),
            image_body('user', 'data-backup-3', '2026-01-03T11:00:00Z'),
        ]
        self.backups = [
            *chain_backups(),
            backup('hand', '2026-01-04T10:00:00', name='data-backup-4'),
        ]
        # inc2's parent is not recorded: inferred
        del self.backups[2].metadata['osc_backup_parent_backup_id']
        self.image_client.get.side_effect = lambda url, params=None, **kw: (
            fakes.response(200, {'images': list(self.images)}))
        self.block_storage.backups.side_effect = (
            lambda **kw: iter(self.backups))
        self.block_storage.find_volume.return_value = fakes.volume(id=VOL)
        self.conn.compute.find_server.return_value = None
        self.conn.current_project_id = 'p' * 32
        self.block_storage.wait_for_delete.return_value = None
        self.image_client.wait_for_delete.return_value = None


class TestList(CatalogCommandCase):
    def setUp(self):
        super().setUp()
        self.cmd = catalog.ListBackup(self.app, None)

    def run_cmd(self, args, verify=()):
        parsed = self.check_parser(self.cmd, args, list(verify))
        headers, rows = self.cmd.take_action(parsed)
        return headers, rows_of(headers, rows)

    def test_columns_and_rows(self):
        headers, rows = self.run_cmd([])
        self.assertEqual(catalog.LIST_HEADERS, tuple(headers))
        self.assertEqual(['inc2', 'img2', 'inc1', 'img1', 'full'],
                         [r['ID'] for r in rows])
        inc2 = rows[0]
        self.assertEqual('volume-backup', inc2['Kind'])
        self.assertEqual(VOL, inc2['Source'])
        self.assertEqual('2026-01-03T10:00:00+00:00', inc2['Created'])
        # inferred: the newest before it
        self.assertEqual('inc1', inc2['Depends On'])
        self.assertEqual(RUN[3], inc2['Run'])
        self.assertEqual(1024**3, inc2['Size'])

    def test_long(self):
        headers, rows = self.run_cmd(['--long'], [('long', True)])
        self.assertEqual(catalog.LIST_HEADERS + catalog.LONG_HEADERS,
                         tuple(headers))
        full = rows[-1]
        self.assertEqual(['inc1'], full['Dependents'])
        self.assertEqual('osc-backup', full['Record']['osc_backup_tool'])
        self.assertEqual('inferred', rows[0]['Chain'])
        self.assertEqual('recorded', rows[2]['Chain'])

    def test_filters(self):
        _, rows = self.run_cmd(['--kind', 'volume-image'])
        self.assertEqual(['img2', 'img1'], [r['ID'] for r in rows])
        _, rows = self.run_cmd(['--run', RUN[2]])
        self.assertEqual(['inc1'], [r['ID'] for r in rows])
        _, rows = self.run_cmd(['--since', '2026-01-02',
                                '--until', '2026-01-02T23:00:00Z'])
        self.assertEqual(['img2', 'inc1'], [r['ID'] for r in rows])
        _, rows = self.run_cmd(['--source', 'data'])
        self.assertEqual(5, len(rows))
        self.block_storage.find_volume.assert_called_with(
            'data', ignore_missing=True)
        self.block_storage.find_volume.return_value = None
        _, rows = self.run_cmd(['--source', 'other'])
        self.assertEqual([], rows)

    def test_bad_filters(self):
        self.assertIn("is not an ISO 8601",
                      self.check_parser_error(self.cmd, ['--since', 'x']))
        self.assertIn('is not a run ID',
                      self.check_parser_error(self.cmd, ['--run', 'x']))
        self.check_parser_error(self.cmd, ['--kind', 'snapshot'])

    def test_by_run(self):
        server = {'osc_backup_server_id': 'srv',
                  'osc_backup_server_name': 'web'}
        self.images.append(image_body(
            'root', 'r', '2026-01-05T10:00:00Z',
            record('server-image', 6, '2026-01-05T10:00:00+00:00',
                   **server)))
        self.backups.append(backup(
            'vol', '2026-01-05T10:01:00',
            metadata=record('backup', 6, '2026-01-05T10:00:00+00:00',
                            **server)))
        headers, rows = self.run_cmd(['--by-run'], [('by_run', True)])
        self.assertEqual(catalog.RUN_HEADERS, tuple(headers))
        first = rows[0]
        self.assertEqual((RUN[6], 'srv', 'web'),
                         (first['Run'], first['Source'],
                          first['Source Name']))
        self.assertEqual(['server-image', 'volume-backup'], first['Kinds'])
        self.assertEqual(6, len(rows))

    def test_dir(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        mpath = make_set(tmp, 'a.raw', record('image'), image_id='ia')
        headers, rows = self.run_cmd(['--dir', tmp])
        self.assertEqual('Path', headers[-1])
        self.assertEqual([('ia', mpath)], [(r['ID'], r['Path'])
                                           for r in rows])
        self.image_client.get.assert_not_called()


class TestShow(CatalogCommandCase):
    def setUp(self):
        super().setUp()
        self.cmd = catalog.ShowBackup(self.app, None)

    def show(self, ident):
        parsed = self.check_parser(self.cmd, [ident], [('backup', ident)])
        fields, values = self.cmd.take_action(parsed)
        return dict(rows_of(fields, [values])[0])

    def test_chain(self):
        info = self.show('inc1')
        self.assertEqual('full', info['depends_on'])
        self.assertEqual('recorded', info['chain'])
        self.assertEqual(['inc2'], info['dependents'])
        info = self.show('inc2')
        self.assertIn('inferred', info['chain'])
        self.assertEqual(RUN[3], info['record']['osc_backup_run_id'])

    def test_by_name(self):
        self.assertEqual('img1', self.show('data-backup-1')['id'])

    def test_not_ours(self):
        for ident in ('user', 'hand', 'data-backup-4', 'nope'):
            parsed = self.check_parser(self.cmd, [ident], [])
            exc = self.assertRaises(exceptions.CommandError,
                                    self.cmd.take_action, parsed)
            self.assertIn('is not a backup osc-backup made', str(exc))


class TestDelete(CatalogCommandCase):
    def setUp(self):
        super().setUp()
        self.cmd = catalog.DeleteBackup(self.app, None)

    def delete(self, args):
        parsed = self.check_parser(self.cmd, args, [])
        headers, rows = self.cmd.take_action(parsed)
        return rows_of(headers, rows)

    def test_base_refused_nothing_deleted(self):
        parsed = self.check_parser(self.cmd, ['full'], [])
        exc = self.assertRaises(exceptions.CommandError,
                                self.cmd.take_action, parsed)
        self.assertIn('inc1, inc2', str(exc))
        self.block_storage.delete_backup.assert_not_called()

    def test_not_ours_refused(self):
        for ident in ('hand', 'user'):
            parsed = self.check_parser(self.cmd, ['img1', ident], [])
            exc = self.assertRaises(exceptions.CommandError,
                                    self.cmd.take_action, parsed)
            self.assertIn('is not a backup osc-backup made', str(exc))
        self.image_client.delete_image.assert_not_called()

    def test_nothing_given(self):
        parsed = self.check_parser(self.cmd, [], [])
        self.assertRaises(exceptions.CommandError, self.cmd.take_action,
                          parsed)

    def test_with_dependents(self):
        rows = self.delete(['full', '--with-dependents'])
        self.assertEqual(['inc2', 'inc1', 'full'], [r['ID'] for r in rows])
        self.assertEqual({'deleted'}, {r['Result'] for r in rows})
        self.assertEqual(
            ['inc2', 'inc1', 'full'],
            [c.args[0] for c in
             self.block_storage.delete_backup.call_args_list])
        self.assertEqual(3, self.block_storage.wait_for_delete.call_count)
        self.assertEqual(0, self.cmd.exit_code)

    def test_failure_sets_exit_code(self):
        self.image_client.delete_image.side_effect = (
            sdk_exc.ConflictException('in use'))
        rows = self.delete(['img1', 'img2'])
        self.assertEqual(['img2', 'img1'], [r['ID'] for r in rows])
        self.assertTrue(rows[0]['Result'].startswith('failed: img2'))
        self.assertEqual(1, self.cmd.exit_code)
        self.assertIn('2 of 2 backups failed to delete', self.stderr.getvalue())

    def test_run(self):
        rows = self.delete(['--run', RUN[4]])
        self.assertEqual(['img1'], [r['ID'] for r in rows])


class TestPrune(CatalogCommandCase):
    def setUp(self):
        super().setUp()
        self.cmd = catalog.PruneBackup(self.app, None)
        self.backups.append(backup(
            'full2', '2026-01-05T10:00:00',
            metadata=record('backup', 7, '2026-01-05T10:00:00+00:00')))
        self.backups[2].metadata['osc_backup_parent_backup_id'] = 'inc1'

    def prune(self, args):
        parsed = self.check_parser(self.cmd, args, [])
        headers, rows = self.cmd.take_action(parsed)
        self.assertEqual(catalog.PRUNE_HEADERS, tuple(headers))
        return {r['ID']: r for r in rows_of(headers, rows)}

    def test_no_rule_refused_at_parse_time(self):
        for args in ([], ['--dry-run'], ['--keep-last', '0']):
            err = self.check_parser_error(self.cmd, args)
            self.assertIn('no retention rule given', err)

    def test_bad_rules(self):
        self.assertIn("not a number or 'unlimited'",
                      self.check_parser_error(
                          self.cmd, ['--keep-daily', 'x']))
        self.assertIn('not a duration', self.check_parser_error(
            self.cmd, ['--keep-within', '2x']))
        self.assertIn("give 'source'", self.check_parser_error(
            self.cmd, ['--keep-last', '1', '--group-by', 'host']))
        self.assertIn('not a time zone', self.check_parser_error(
            self.cmd, ['--keep-last', '1', '--time-zone', 'Mars/Base']))

    def test_dry_run_then_real_run(self):
        rows = self.prune(['--keep-last', '1', '--dry-run'])
        self.block_storage.delete_backup.assert_not_called()
        self.image_client.delete_image.assert_not_called()
        self.assertEqual(
            {'full2': 'keep', 'inc2': 'delete', 'inc1': 'delete',
             'full': 'delete', 'img2': 'keep', 'img1': 'delete'},
            {i: r['Action'] for i, r in rows.items()})
        self.assertEqual(['newest', 'last'], rows['full2']['Reasons'])
        self.assertEqual('dry run', rows['inc2']['Result'])
        self.assertIn('would delete 4', self.stderr.getvalue())
        dry = {i for i, r in rows.items() if r['Action'] == 'delete'}

        rows = self.prune(['--keep-last', '1'])
        deleted = [c.args[0] for c in
                   self.block_storage.delete_backup.call_args_list]
        deleted += [c.args[0] for c in
                    self.image_client.delete_image.call_args_list]
        self.assertEqual(dry, set(deleted))
        self.assertEqual(['inc2', 'inc1', 'full', 'img1'], deleted)
        self.assertIn('Kept 2, deleted 4', self.stderr.getvalue())
        self.assertEqual(0, self.cmd.exit_code)

    def test_chain_kept_as_bases(self):
        rows = self.prune(['--keep-last', '1', '--group-by', 'source',
                           '--kind', 'volume-backup', '--dry-run'])
        self.assertEqual('keep', rows['full2']['Action'])
        del self.backups[-1]
        rows = self.prune(['--keep-last', '1', '--dry-run'])
        self.assertEqual(['base of inc2'], rows['inc1']['Reasons'])
        self.assertEqual(['base of inc1'], rows['full']['Reasons'])

    def test_failures_continue_and_exit_non_zero(self):
        def delete_backup(backup_id, ignore_missing=True, force=False):
            if backup_id == 'inc2':
                raise sdk_exc.HttpException('boom', details='boom')

        self.block_storage.delete_backup.side_effect = delete_backup
        rows = self.prune(['--keep-last', '1'])
        self.assertEqual('failed: inc2: boom', rows['inc2']['Result'])
        self.assertIn('not deleted', rows['inc1']['Result'])
        self.assertEqual('deleted', rows['img1']['Result'])
        self.assertEqual(1, self.cmd.exit_code)
        self.assertIn('3 could not be deleted', self.stderr.getvalue())

    def test_time_zone_and_within(self):
        parsed = self.check_parser(
            self.cmd, ['--keep-within', '1y', '--time-zone', 'local'], [])
        self.assertIsInstance(parsed.time_zone, datetime.tzinfo)
        _, rows = self.cmd.take_action(parsed)
        self.assertEqual(6, len(rows))

    def test_dir(self):
        tmp = self.useFixture(fixtures.TempDir()).path
        make_set(tmp, 'a.raw', record('image', 1), image_id='ia')
        make_set(tmp, 'b.raw', record('image', 2, '2026-01-02T00:00:00Z'),
                 image_id='ib')
        rows = self.prune(['--keep-last', '1', '--dir', tmp])
        self.assertEqual('deleted', rows['ia']['Result'])
        self.image_client.get.assert_not_called()
