"""`openstack backup cleanup` on the local real cloud.

One of everything an interrupted run can leave is planted with the tool's
naming (a temporary volume and snapshot, a restore target, an upload that
never got its record, a Nova root snapshot, a re-stored key), next to
look-alikes that lack the run tag or are in use. `--dry-run` must list
exactly the planted ones, and `backup cleanup` must remove exactly them.
Killed runs themselves are in test_volume_via_image.py.
"""

import uuid


from osc_backup.tests.functional import base

TOOL_MD = 'osc_backup_tool=osc-backup'


class TestCleanup(base.FunctionalTestCase):
    def setUp(self):
        super().setUp()
        self.conn = self.connect()
        self.run_id = uuid.uuid4().hex[:12]

    def tmp(self, role):
        return f'osc-backup-tmp-{self.run_id}-{role}-of-ft'

    def volume(self, name, *metadata):
        cmd = ['volume', 'create', '--size', '1']
        for item in metadata:
            cmd += ['--property', item]
        cmd.append(name)
        vol = self.openstack(cmd, parse_output=True)
        self.addCleanup(self._delete_volume, vol['id'], base.MEMBER_CLOUD)
        return self.wait_for_status('volume', vol['id'], 'available')

    def image(self, name, *properties):
        cmd = ['image', 'create', '--disk-format', 'raw',
               '--container-format', 'bare', name]
        for item in properties:
            cmd[2:2] = ['--property', item]
        image = self.openstack(cmd, parse_output=True)
        self.addCleanup(self.conn.image.delete_image, image['id'],
                        ignore_missing=True)
        return image

    def secret(self, name):
        secret = self.conn.key_manager.create_secret(
            name=name, payload='not a real key',
            payload_content_type='text/plain', secret_type='opaque')
        uuid_ = secret.secret_ref.rstrip('/').rsplit('/', 1)[-1]
        self.addCleanup(self.conn.key_manager.delete_secret, uuid_,
                        ignore_missing=True)
        return uuid_

    def exists(self, kind, ident):
        getter = {
            'volume': self.conn.block_storage.find_volume,
            'snapshot': self.conn.block_storage.find_snapshot,
            'image': self.conn.image.find_image,
        }.get(kind)
        if getter is not None:
            return getter(ident, ignore_missing=True) is not None
        return any(s.secret_ref.endswith('/' + ident)
                   for s in self.conn.key_manager.secrets())

    def test_finds_and_removes_only_what_carries_the_run_tag(self):
        run_md = [TOOL_MD, f'osc_backup_run_id={self.run_id}',
                  'osc_backup_temporary=true']
        planted = {}
        tmp_vol = self.volume(self.tmp('volume'), *run_md)
        planted[tmp_vol['id']] = 'volume'
        # the user's volume, which a run snapshots (not touched)
        user_vol = self.volume(f'ft-{self.run_id}', *run_md)
        snap = self.openstack(
            ['volume', 'snapshot', 'create', '--volume', user_vol['id'],
             '--property', TOOL_MD, '--property',
             f'osc_backup_run_id={self.run_id}', self.tmp('snapshot')],
            parse_output=True)
        self.addCleanup(self._delete_simple, 'volume snapshot', snap['id'],
                        base.MEMBER_CLOUD)
        self.wait_for_status('volume snapshot', snap['id'], 'available')
        planted[snap['id']] = 'snapshot'
        # Cinder's backup restore replaces a target's metadata
        target = self.volume(self.tmp('restore'), 'app=db')
        planted[target['id']] = 'volume'
        planted[self.image(self.tmp('image'),
                           'osc_backup_run_id=aaaaaaaaaaaa')['id']] = 'image'
        planted[self.image(self.tmp('root'))['id']] = 'image'
        key = self.secret(f'osc-backup-key-{self.run_id}-of-ft')
        planted[key] = 'secret'

        look_alikes = {}
        look_alikes[self.volume(f'osc-backup-tmp-volume-of-{self.run_id}',
                                *run_md)['id']] = 'volume'
        look_alikes[user_vol['id']] = 'volume'
        look_alikes[self.image(f'osc-backup-tmp-image-of-{self.run_id}',
                               f'osc_backup_run_id={self.run_id}')['id']] = (
            'image')
        look_alikes[self.secret(f'osc-backup-key-of-{self.run_id}')] = (
            'secret')
        # a key of this run that an image uses (a finished image restore)
        used = self.secret(f'osc-backup-key-{self.run_id}-of-used')
        look_alikes[used] = 'secret'
        look_alikes[self.image(
            f'ft-restored-{self.run_id}',
            f'cinder_encryption_key_id={used}')['id']] = 'image'

        listed = self.openstack(
            ['backup', 'cleanup', '--dry-run', '--run-id', self.run_id],
            parse_output=True)
        self.assertEqual(planted, {r['ID']: r['Kind'] for r in listed})
        self.assertEqual({'would delete'}, {r['Result'] for r in listed})
        for row in listed:
            self.assertIn('delete', row['Remove Command'])
        # without --run-id too (other runs' leftovers may be listed)
        every = self.openstack(['backup', 'cleanup', '--dry-run'],
                               parse_output=True)
        self.assertLessEqual(set(planted), {r['ID'] for r in every})
        for ident, kind in planted.items():
            self.assertTrue(self.exists(kind, ident), (kind, ident))

        removed = self.openstack(['backup', 'cleanup', '--run-id',
                                  self.run_id], parse_output=True)
        self.assertEqual(planted, {r['ID']: r['Kind'] for r in removed})
        self.assertEqual({'deleted'}, {r['Result'] for r in removed})
        for ident, kind in planted.items():
            self.assertFalse(self.exists(kind, ident), (kind, ident))
        for ident, kind in look_alikes.items():
            self.assertTrue(self.exists(kind, ident), (kind, ident))

    def test_bad_run_id_is_one_line_and_touches_nothing(self):
        p = base.subprocess.run(
            [base.OPENSTACK, '--os-cloud', base.MEMBER_CLOUD, 'backup',
             'cleanup', '--run-id', '$(touch /tmp/x)'],
            env=self.env, capture_output=True, text=True,
            stdin=base.subprocess.DEVNULL, timeout=120)
        self.assertNotEqual(0, p.returncode)
        self.assertIn('is not a run ID', p.stderr)
