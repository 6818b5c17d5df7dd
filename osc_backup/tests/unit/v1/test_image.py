from unittest import mock

from osc_lib import exceptions

from osc_backup.common import errors
from osc_backup.common import transfer
from osc_backup.procedures import image_restore
from osc_backup.procedures import image_save
from osc_backup.tests.unit import base
from osc_backup.v1 import image as image_cmd


def saved(**over):
    values = dict(
        image_id='img-1', name='db', file='/b/db-img1.raw',
        manifest='/b/db-img1.raw.manifest.json',
        checksum_file='/b/db-img1.raw.sha512', size=3 * transfer.MiB,
        hash_algo='sha512', hash_value='a' * 128, verified=True,
        resumed_from=0, retries=1, duration=1.234,
        throughput=3 * transfer.MiB / 1.234,
    )
    values.update(over)
    return image_save.SavedImage(**values)


class TestSaveImage(base.TestCommand):
    def setUp(self):
        super().setUp()
        self.cmd = image_cmd.SaveImage(self.app, None)
        patcher = mock.patch.object(image_save, 'save_image',
                                    return_value=saved())
        self.save = patcher.start()
        self.addCleanup(patcher.stop)

    def test_parser_defaults(self):
        parsed = self.check_parser(
            self.cmd, ['db'],
            [('image', 'db'), ('file', None), ('dir', None),
             ('overwrite', False), ('keep_partial', False),
             ('resume', True), ('retries', 5), ('allow_unverified', False)])
        self.assertIsNotNone(parsed)

    def test_parser_options(self):
        self.check_parser(
            self.cmd,
            ['db', '--dir', '/b', '--force', '--keep-partial',
             '--no-resume', '--retries', '0', '--allow-unverified'],
            [('dir', '/b'), ('overwrite', True), ('keep_partial', True),
             ('resume', False), ('retries', 0),
             ('allow_unverified', True)])
        self.check_parser(self.cmd, ['db', '--overwrite', '--file', 'f'],
                          [('overwrite', True), ('file', 'f')])

    def test_parser_rejects(self):
        for args in (['db', '--file', 'f', '--dir', 'd'],
                     ['db', '--retries', '-1'],
                     ['db', '--retries', 'many'],
                     []):
            self.check_parser_error(self.cmd, args)

    def test_take_action_dir(self):
        parsed = self.check_parser(self.cmd, ['db', '--dir', '/b'], [])
        columns, data = self.cmd.take_action(parsed)
        self.assertEqual(image_cmd.SAVE_COLUMNS, columns)
        row = dict(zip(columns, data))
        self.assertEqual('/b/db-img1.raw', row['file'])
        self.assertEqual(1.2, row['duration'])
        self.assertEqual(2.4, row['throughput_mib_s'])
        self.assertEqual('sha512', row['hash_algo'])
        args, kwargs = self.save.call_args
        self.assertEqual((self.conn, 'db', '/b'), args)
        self.assertFalse(kwargs['as_file'])
        self.assertFalse(kwargs['overwrite'])
        self.assertTrue(kwargs['resume'])
        self.assertEqual(5, kwargs['options'].retries)
        # stderr is not a terminal: no progress
        self.assertFalse(kwargs['reporter'].progress)

    def test_take_action_file(self):
        parsed = self.check_parser(
            self.cmd, ['db', '--file', 'x.raw', '--overwrite',
                       '--keep-partial', '--retries', '2'], [])
        self.cmd.take_action(parsed)
        args, kwargs = self.save.call_args
        self.assertEqual('x.raw', args[2])
        self.assertTrue(kwargs['as_file'])
        self.assertTrue(kwargs['overwrite'])
        self.assertTrue(kwargs['keep_partial'])
        self.assertEqual(2, kwargs['options'].retries)

    def test_default_is_current_directory(self):
        parsed = self.check_parser(self.cmd, ['db'], [])
        self.cmd.take_action(parsed)
        args, kwargs = self.save.call_args
        self.assertEqual('.', args[2])
        self.assertFalse(kwargs['as_file'])

    def test_errors_become_command_errors(self):
        self.save.side_effect = image_save.HashMismatch('did not verify')
        parsed = self.check_parser(self.cmd, ['db'], [])
        e = self.assertRaises(exceptions.CommandError, self.cmd.take_action,
                              parsed)
        self.assertEqual('did not verify', str(e))


class TestRestoreImage(base.TestCommand):
    def setUp(self):
        super().setUp()
        self.cmd = image_cmd.RestoreImage(self.app, None)
        patcher = mock.patch.object(
            image_restore, 'restore_image',
            return_value=image_restore.RestoredImage(
                image_id='new', name='db', status='active', size=5,
                disk_format='raw', container_format='bare',
                os_hash_algo='sha512', os_hash_value='a' * 128,
                checksum='c' * 32, verified='sha512',
                source_image_id='old', manifest='/b/x.manifest.json',
                duration=2.0))
        self.restore = patcher.start()
        self.addCleanup(patcher.stop)

    def test_parser(self):
        self.check_parser(
            self.cmd, ['/b/x.raw'],
            [('source', '/b/x.raw'), ('name', None), ('properties', {}),
             ('timeout', 3600.0)])
        self.check_parser(
            self.cmd, ['/b/x.raw', '--name', 'n', '--property', 'a=1',
                       '--property', 'b=2', '--timeout', '60'],
            [('name', 'n'), ('properties', {'a': '1', 'b': '2'}),
             ('timeout', 60.0)])
        for args in ([], ['x', '--timeout', '0'], ['x', '--property', 'a']):
            self.check_parser_error(self.cmd, args)

    def test_take_action(self):
        parsed = self.check_parser(
            self.cmd, ['/b/x.raw', '--name', 'n', '--property', 'a=1'], [])
        columns, data = self.cmd.take_action(parsed)
        self.assertEqual(image_cmd.RESTORE_COLUMNS, columns)
        row = dict(zip(columns, data))
        self.assertEqual('new', row['image_id'])
        self.assertEqual('sha512', row['verified'])
        self.assertEqual('old', row['source_image_id'])
        args, kwargs = self.restore.call_args
        self.assertEqual((self.conn, '/b/x.raw'), args)
        self.assertEqual('n', kwargs['name'])
        self.assertEqual({'a': '1'}, kwargs['properties'])
        self.assertEqual(3600.0, kwargs['timeout'])

    def test_errors_become_command_errors(self):
        self.restore.side_effect = errors.InvalidInput('no manifest')
        parsed = self.check_parser(self.cmd, ['x'], [])
        self.assertRaises(exceptions.CommandError, self.cmd.take_action,
                          parsed)
