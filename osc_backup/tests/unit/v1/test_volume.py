from unittest import mock

from openstack import exceptions as sdk_exc
from osc_lib import exceptions

from osc_backup.tests.unit import base
from osc_backup.tests.unit import fakes
from osc_backup.v1 import volume as volume_cmd


class TestCreateVolumeBackupViaImage(base.TestCommand):
    def setUp(self):
        super().setUp()
        self.vol = fakes.volume(status='available', name='db')
        self.block_storage.find_volume.return_value = self.vol
        self.image = fakes.image(status='active', name='b')
        self.block_storage.upload_volume_to_image.return_value = {
            'image_id': self.image.id
        }
        self.image_client.get_image.return_value = self.image
        self.image_client.update_image.return_value = self.image
        self.image_client.wait_for_status.return_value = self.image
        self.block_storage.wait_for_status.return_value = self.vol
        self.cmd = volume_cmd.CreateVolumeBackup(self.app, None)

    def test_parser_defaults(self):
        parsed = self.check_parser(
            self.cmd,
            ['db', '--via-image'],
            [
                ('volume', 'db'),
                ('method', 'image'),
                ('disk_format', 'raw'),
                ('container_format', 'bare'),
                ('wait', True),
                ('timeout', 3600.0),
                ('dry_run', False),
                ('keep_temporary', False),
                ('properties', {}),
            ],
        )
        self.assertIsNone(parsed.name)

    def test_parser_options(self):
        self.check_parser(
            self.cmd,
            [
                'db', '--via-image', '--name', 'n', '--description', 'd',
                '--disk-format', 'qcow2', '--container-format', 'ovf',
                '--property', 'a=1', '--property', 'b=2', '--no-wait',
                '--timeout', '60', '--dry-run', '--keep-temporary',
            ],
            [
                ('name', 'n'), ('description', 'd'),
                ('disk_format', 'qcow2'), ('container_format', 'ovf'),
                ('properties', {'a': '1', 'b': '2'}), ('wait', False),
                ('timeout', 60.0), ('dry_run', True),
                ('keep_temporary', True),
            ],
        )

    def test_parser_rejects(self):
        for args in (
            ['db', '--wait', '--no-wait'],
            ['db', '--timeout', '0'],
            ['db', '--timeout', 'soon'],
            ['db', '--disk-format', 'iso'],
            ['db', '--container-format', 'tar'],
            ['db', '--property', 'novalue'],
            [],
        ):
            self.check_parser_error(self.cmd, args)

    def test_take_action(self):
        parsed = self.check_parser(
            self.cmd, ['db', '--via-image', '--name', 'b'], []
        )
        columns, data = self.cmd.take_action(parsed)
        self.assertEqual(volume_cmd.IMAGE_COLUMNS, columns)
        result = dict(zip(columns, data))
        self.assertEqual(self.image.id, result['image_id'])
        self.assertEqual('image', result['method'])
        self.assertEqual('offline', result['consistency'])
        self.assertEqual(self.vol.id, result['source_volume_id'])
        self.block_storage.find_volume.assert_called_once_with(
            'db', ignore_missing=False
        )

    def test_unknown_volume(self):
        self.block_storage.find_volume.side_effect = (
            sdk_exc.NotFoundException('nope')
        )
        parsed = self.check_parser(self.cmd, ['nope'], [])
        exc = self.assertRaises(
            exceptions.CommandError, self.cmd.take_action, parsed
        )
        self.assertEqual("No volume with name or ID 'nope' found.", str(exc))

    def test_ambiguous_volume(self):
        self.block_storage.find_volume.side_effect = (
            sdk_exc.DuplicateResource('two')
        )
        parsed = self.check_parser(self.cmd, ['db'], [])
        exc = self.assertRaises(
            exceptions.CommandError, self.cmd.take_action, parsed
        )
        self.assertIn("More than one volume is named 'db'", str(exc))

    def test_wrong_status_creates_nothing(self):
        self.vol.status = 'error'
        parsed = self.check_parser(self.cmd, ['db'], [])
        exc = self.assertRaises(
            exceptions.CommandError, self.cmd.take_action, parsed
        )
        self.assertIn("is 'error'", str(exc))
        self.block_storage.upload_volume_to_image.assert_not_called()

    @mock.patch(
        'osc_backup.common.microversion.snapshot_microversion',
        return_value='3.65',
    )
    def test_dry_run(self, _mv):
        self.vol.status = 'in-use'
        parsed = self.check_parser(
            self.cmd, ['db', '--via-image', '--dry-run'], []
        )
        columns, data = self.cmd.take_action(parsed)
        result = dict(zip(columns, data))
        self.assertTrue(result['dry_run'])
        self.assertEqual('crash-consistent', result['consistency'])
        self.block_storage.create_snapshot.assert_not_called()
        self.block_storage.upload_volume_to_image.assert_not_called()

    def test_progress_only_on_tty(self):
        parsed = self.check_parser(self.cmd, ['db', '--via-image'], [])
        self.cmd.take_action(parsed)
        self.assertEqual('', self.stderr.getvalue())
        self.stderr.isatty = lambda: True
        self.cmd.take_action(parsed)
        self.assertIn('Uploading volume', self.stderr.getvalue())
