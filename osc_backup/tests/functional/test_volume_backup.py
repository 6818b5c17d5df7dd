"""`backup volume create` via the Cinder Backup API, the automatic choice,
and `backup volume restore`, against the minicloud, comparing the sha256 of
the backend bytes at every point."""


from osc_backup.tests.functional import base

MV = ['--os-volume-api-version', '3.43']


class VolumeBackupTestCase(base.FunctionalTestCase):
    def backup(self, volume, *args, cloud=base.MEMBER_CLOUD):
        out = self.openstack(
            ['backup', 'volume', 'create', volume, *args],
            cloud=cloud, parse_output=True,
        )
        if out.get('backup_id'):
            self.addCleanup(self._delete_backup, out['backup_id'], cloud)
        if out.get('image_id'):
            self.addCleanup(
                self._delete_simple, 'image', out['image_id'], cloud
            )
        return out

    def _delete_backup(self, ident, cloud=base.MEMBER_CLOUD):
        self._delete_simple('volume backup', ident, cloud)

    def restore(self, source, *args):
        out = self.openstack(
            ['backup', 'volume', 'restore', source, *args],
            parse_output=True,
        )
        if '--volume' not in args:
            self.addCleanup(
                self._delete_volume, out['volume_id'], base.MEMBER_CLOUD
            )
        self.assertEqual('available', out['status'])
        # the command waited: Cinder agrees
        info = self.openstack(['volume', 'show', out['volume_id']],
                              parse_output=True)
        self.assertEqual('available', info['status'])
        return out

    def backup_record(self, backup_id):
        return self.openstack(
            [*MV, 'volume', 'backup', 'show', backup_id], parse_output=True
        )


class TestBackupPath(VolumeBackupTestCase):
    def test_detached_full_incremental_and_restores(self):
        vol = self.create_volume(1)
        h0 = self.write_random(vol['id'], mib=4, offset_mib=1)

        full = self.backup(vol['id'], '--via-backup', '--incremental')
        self.assertEqual('backup', full['method'])
        self.assertEqual('available', full['status'])
        self.assertFalse(full['is_incremental'])
        self.assertIn('made a full backup instead', full['method_reason'])
        self.assertEqual('offline', full['consistency'])
        md = self.backup_record(full['backup_id'])['metadata']
        self.assertEqual('file', md['osc_backup_volume_type'])
        self.assertEqual('1', md['osc_backup_volume_size_gb'])
        self.assertEqual('false', md['osc_backup_bootable'])
        self.assertEqual(vol['id'], md['osc_backup_source_volume_id'])
        self.assertEqual(vol['name'], md['osc_backup_source_volume_name'])
        self.assertEqual(full['run_id'], md['osc_backup_run_id'])
        self.assertEqual(h0, self.volume_sha256(vol['id']))

        h1 = self.write_random(vol['id'], mib=2, offset_mib=300)
        self.assertNotEqual(h0, h1)
        incr = self.backup(
            vol['id'], '--incremental', '--property', 'purpose=ft'
        )  # automatic: the backup service runs
        self.assertEqual('backup', incr['method'])
        self.assertTrue(incr['is_incremental'])
        self.assertEqual(
            'ft', self.backup_record(incr['backup_id'])['metadata']['purpose']
        )

        r0 = self.restore(full['backup_id'], '--name', self.unique_name())
        r1 = self.restore(incr['backup_id'])
        self.assertEqual('file', r0['volume_type'])
        self.assertEqual(h0, self.volume_sha256(r0['volume_id']))
        self.assertEqual(h1, self.volume_sha256(r1['volume_id']))
        self.assertEqual(h1, self.volume_sha256(vol['id']))

    def test_in_use_backup_and_restore_onto_existing(self):
        vol = self.create_volume(1)
        h0 = self.write_random(vol['id'], mib=3, offset_mib=7)
        self.minicloud('attach', vol['id'])
        self.wait_for_status('volume', vol['id'], 'in-use')

        out = self.backup(vol['id'], '--via-backup')
        self.assertEqual('crash-consistent', out['consistency'])
        self.assertEqual('available', out['status'])
        md = self.backup_record(out['backup_id'])['metadata']
        self.assertEqual('crash-consistent', md['osc_backup_consistency'])
        # the volume is attached again, bytes untouched
        info = self.openstack(['volume', 'show', vol['id']],
                              parse_output=True)
        self.assertEqual('in-use', info['status'])
        self.assertEqual(h0, self.volume_sha256(vol['id']))

        new = self.restore(out['backup_id'])
        self.assertEqual(h0, self.volume_sha256(new['volume_id']))

        target = self.create_volume(1)
        self.write_random(target['id'], mib=1, offset_mib=0)
        refused = self.openstack(
            ['backup', 'volume', 'restore', out['backup_id'],
             '--volume', target['id']],
            fail_ok=True,
        )
        del refused
        self.assertNotEqual(h0, self.volume_sha256(target['id']))
        # onto an in-use volume: refused even with --force
        p = base.subprocess.run(
            [base.OPENSTACK, '--os-cloud', base.MEMBER_CLOUD, 'backup',
             'volume', 'restore', out['backup_id'], '--volume', vol['id'],
             '--force'],
            env=self.env, capture_output=True, text=True,
            stdin=base.subprocess.DEVNULL, timeout=300,
        )
        self.assertNotEqual(0, p.returncode)
        self.assertIn("is 'in-use'", p.stderr)

        over = self.restore(
            out['backup_id'], '--volume', target['id'], '--force'
        )
        self.assertEqual(target['id'], over['volume_id'])
        self.assertEqual(h0, self.volume_sha256(target['id']))
