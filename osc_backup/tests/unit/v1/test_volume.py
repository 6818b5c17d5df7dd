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
        self.glance = fakes.FakeGlance(self.image_client, self.image)
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
            # waiting is the default: there is no --wait that does nothing
            ['db', '--wait'],
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
        self.assertEqual('b', result['name'])
        self.assertEqual('image', result['method'])
        # explicit --via-image says so, like --via-backup does
        self.assertEqual('requested with --via-image', result['method_reason'])
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
        self.assertEqual('requested with --via-image', result['method_reason'])
        self.assertEqual('crash-consistent', result['consistency'])
        self.block_storage.post.assert_not_called()
        self.block_storage.upload_volume_to_image.assert_not_called()

    def test_progress_only_on_tty(self):
        parsed = self.check_parser(self.cmd, ['db', '--via-image'], [])
        self.cmd.take_action(parsed)
        self.assertEqual('', self.stderr.getvalue())
        self.stderr.isatty = lambda: True
        self.cmd.take_action(parsed)
        self.assertIn('Uploading volume', self.stderr.getvalue())


class TestCreateVolumeBackupViaBackup(base.TestCommand):
    def setUp(self):
        super().setUp()
        from osc_backup.procedures import volume_backup
        from osc_backup.tests.unit.test_volume_backup import backup

        self.volume_backup = volume_backup
        self.vol = fakes.volume(status='available', name='db')
        self.block_storage.find_volume.return_value = self.vol
        self.backup = backup(status='available', volume_id=self.vol.id)
        self.block_storage.create_backup.return_value = self.backup
        self.block_storage.get_volume.return_value = self.vol
        self.block_storage.backups.return_value = []
        self.block_storage.wait_for_status.side_effect = (
            lambda res, status, **kw: res
        )
        patcher = mock.patch.object(
            volume_backup, 'supports', return_value=True
        )
        patcher.start()
        self.addCleanup(patcher.stop)
        # image path, for the fallbacks
        self.image = fakes.image(status='active', name='b')
        self.block_storage.upload_volume_to_image.return_value = {
            'image_id': self.image.id
        }
        self.glance = fakes.FakeGlance(self.image_client, self.image)
        self.image_client.wait_for_status.return_value = self.image
        self.cmd = volume_cmd.CreateVolumeBackup(self.app, None)

    def run_cmd(self, args):
        parsed = self.check_parser(self.cmd, args, [])
        columns, data = self.cmd.take_action(parsed)
        return dict(zip(columns, data)), columns

    def test_parser(self):
        self.check_parser(
            self.cmd,
            [
                'db', '--via-backup', '--incremental', '--container', 'c',
                '--availability-zone', 'az', '--property', 'k=v',
            ],
            [
                ('method', 'backup'), ('incremental', True),
                ('container', 'c'), ('availability_zone', 'az'),
                ('properties', {'k': 'v'}), ('download', None),
            ],
        )
        parsed = self.check_parser(self.cmd, ['db'], [('method', 'auto')])
        self.assertFalse(parsed.incremental)
        self.check_parser_error(
            self.cmd, ['db', '--via-backup', '--via-image']
        )

    def test_via_backup(self):
        result, columns = self.run_cmd(['db', '--via-backup', '--name', 'n'])
        self.assertEqual(volume_cmd.BACKUP_COLUMNS, columns)
        self.assertEqual('backup', result['method'])
        self.assertEqual(self.backup.id, result['backup_id'])
        self.assertEqual('requested with --via-backup', result['method_reason'])
        self.block_storage.services.assert_not_called()

    def test_download_refused_with_backup(self):
        parsed = self.check_parser(
            self.cmd, ['db', '--via-backup', '--download', '/tmp'], []
        )
        exc = self.assertRaises(
            exceptions.CommandError, self.cmd.take_action, parsed
        )
        self.assertIn('--via-image --download', str(exc))
        self.block_storage.find_volume.assert_not_called()

    def test_option_mixes_refused(self):
        for args, text in (
            (['db', '--via-backup', '--disk-format', 'qcow2'],
             'only apply to the image path'),
            (['db', '--via-backup', '--keep-temporary'],
             'only apply to the image path'),
            (['db', '--via-image', '--incremental'],
             'only apply to the Cinder backup path'),
            (['db', '--via-image', '--container', 'c'],
             'only apply to the Cinder backup path'),
            (['db', '--incremental', '--disk-format', 'qcow2'],
             'cannot be combined'),
        ):
            parsed = self.check_parser(self.cmd, args, [])
            exc = self.assertRaises(
                exceptions.CommandError, self.cmd.take_action, parsed
            )
            self.assertIn(text, str(exc))
        self.block_storage.create_backup.assert_not_called()
        self.block_storage.upload_volume_to_image.assert_not_called()

    def test_auto_takes_backup_when_service_up(self):
        from osc_backup.tests.unit.test_volume_backup import service

        self.block_storage.services.return_value = [
            service(availability_zone=self.vol.availability_zone)
        ]
        result, columns = self.run_cmd(['db'])
        self.assertEqual(volume_cmd.BACKUP_COLUMNS, columns)
        self.assertIn('services API', result['method_reason'])

    def test_auto_takes_image_without_service(self):
        self.block_storage.services.return_value = []
        result, columns = self.run_cmd(['db'])
        self.assertEqual(volume_cmd.IMAGE_COLUMNS, columns)
        self.assertEqual('image', result['method'])
        self.assertIn('no cinder-backup service', result['method_reason'])
        self.block_storage.create_backup.assert_not_called()

    def test_auto_image_options_choose_image(self):
        result, _ = self.run_cmd(['db', '--disk-format', 'qcow2'])
        self.assertEqual('image', result['method'])
        self.assertIn('--disk-format', result['method_reason'])
        self.block_storage.services.assert_not_called()

    def test_auto_backup_options_without_service(self):
        self.block_storage.services.return_value = []
        parsed = self.check_parser(self.cmd, ['db', '--incremental'], [])
        exc = self.assertRaises(
            exceptions.CommandError, self.cmd.take_action, parsed
        )
        self.assertIn('--incremental need the Cinder backup path', str(exc))

    def _member_rejected(self):
        from osc_backup.tests.unit.test_volume_backup import http_error

        self.block_storage.services.side_effect = http_error(
            sdk_exc.ForbiddenException, 403, 'policy'
        )
        self.backup.status = 'error'
        self.backup.fail_reason = 'Service not found for creating backup.'
        self.block_storage.get_backup.return_value = self.backup

        def wait(res, status, **kw):
            if res is self.backup:
                raise sdk_exc.ResourceFailure('error')
            return res

        self.block_storage.wait_for_status.side_effect = wait

    def test_auto_member_falls_back_to_image(self):
        self._member_rejected()
        result, _columns = self.run_cmd(['db'])
        self.assertEqual('image', result['method'])
        self.assertIn('fell back to the image path', result['method_reason'])
        self.assertIn(self.backup.id, result['method_reason'])
        self.assertIn('WARNING', self.stderr.getvalue())
        self.block_storage.upload_volume_to_image.assert_called_once()

    def test_via_backup_rejected_is_an_error(self):
        self._member_rejected()
        parsed = self.check_parser(self.cmd, ['db', '--via-backup'], [])
        exc = self.assertRaises(
            exceptions.CommandError, self.cmd.take_action, parsed
        )
        self.assertIn('Use --via-image', str(exc))
        self.block_storage.upload_volume_to_image.assert_not_called()

    def test_auto_incremental_rejected_is_an_error(self):
        self._member_rejected()
        parsed = self.check_parser(self.cmd, ['db', '--incremental'], [])
        self.assertRaises(
            exceptions.CommandError, self.cmd.take_action, parsed
        )
        self.block_storage.upload_volume_to_image.assert_not_called()

    def test_dry_run_backup(self):
        result, columns = self.run_cmd(['db', '--via-backup', '--dry-run'])
        self.assertEqual(volume_cmd.DRY_RUN_COLUMNS, columns)
        self.assertEqual('requested with --via-backup', result['method_reason'])
        self.assertTrue(result['dry_run'])
        self.assertEqual('backup', result['method'])
        self.block_storage.create_backup.assert_not_called()

    @mock.patch(
        'osc_backup.common.microversion.snapshot_microversion',
        return_value='3.65',
    )
    def test_dry_run_auto_image(self, _mv):
        self.block_storage.services.return_value = []
        result, columns = self.run_cmd(['db', '--dry-run'])
        self.assertEqual('image', result['method'])
        self.assertIn('method_reason', columns)
        self.block_storage.upload_volume_to_image.assert_not_called()

    @mock.patch('osc_backup.procedures.image_save.save_image')
    def test_download_with_image_path(self, save):
        import tempfile

        target = tempfile.mkdtemp()
        self.addCleanup(__import__('shutil').rmtree, target)
        save.return_value.files = ['d.raw', 'd.raw.manifest.json']
        result, columns = self.run_cmd(
            ['db', '--via-image', '--download', target]
        )
        self.assertEqual(target, save.call_args.args[2])
        self.assertIn('files', columns)
        self.assertEqual(
            ['d.raw', 'd.raw.manifest.json'],
            result['files'].machine_readable(),
        )


class TestRestoreVolume(base.TestCommand):
    def setUp(self):
        super().setUp()
        from osc_backup.tests.unit.test_volume_backup import backup

        self.backup = backup(
            status='available', size=1,
            metadata={'osc_backup_volume_type': 'file'},
        )
        self.block_storage.find_backup.return_value = self.backup
        self.image_client.find_image.return_value = None
        self.block_storage.find_type.return_value = mock.Mock()
        self.new = fakes.volume(status='creating', name='r')
        self.block_storage.create_volume.return_value = self.new
        self.block_storage.update_volume.side_effect = (
            lambda vol, **attrs: [setattr(vol, k, v) for k, v in
                                  attrs.items()] and vol
        )
        self.block_storage.get_volume.return_value = self.new
        self.block_storage.get_backup.return_value = self.backup
        self.block_storage.wait_for_status.side_effect = (
            lambda res, status, **kw: res
        )
        self.cmd = volume_cmd.RestoreVolume(self.app, None)

    def test_parser(self):
        self.check_parser(
            self.cmd,
            [
                'b', '--name', 'n', '--type', 't', '--availability-zone',
                'az', '--description', 'd', '--no-wait', '--timeout', '9',
            ],
            [
                ('source', 'b'), ('name', 'n'), ('volume_type', 't'),
                ('availability_zone', 'az'), ('description', 'd'),
                ('wait', False), ('timeout', 9.0), ('volume', None),
                ('force', False),
            ],
        )
        self.check_parser(
            self.cmd, ['b', '--volume', 'v', '--force'],
            [('volume', 'v'), ('force', True)],
        )
        self.check_parser_error(self.cmd, [])

    def test_restore(self):
        parsed = self.check_parser(self.cmd, ['b', '--name', 'r'], [])
        columns, data = self.cmd.take_action(parsed)
        self.assertEqual(volume_cmd.RESTORE_COLUMNS, columns)
        result = dict(zip(columns, data))
        self.assertEqual(self.new.id, result['volume_id'])
        self.assertEqual('r', result['name'])
        self.block_storage.restore_backup.assert_called_once_with(
            self.backup, self.new.id
        )

    def test_unknown_source(self):
        self.block_storage.find_backup.return_value = None
        parsed = self.check_parser(self.cmd, ['nope'], [])
        exc = self.assertRaises(
            exceptions.CommandError, self.cmd.take_action, parsed
        )
        self.assertEqual(
            "No backup or image with name or ID 'nope' found.", str(exc)
        )

    def test_volume_without_force(self):
        parsed = self.check_parser(self.cmd, ['b', '--volume', 'v'], [])
        exc = self.assertRaises(
            exceptions.CommandError, self.cmd.take_action, parsed
        )
        self.assertIn('add --force', str(exc))
        self.block_storage.restore_backup.assert_not_called()
