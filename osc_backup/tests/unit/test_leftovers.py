import io
from unittest import mock

from openstack.key_manager.v1 import secret as _secret
from openstack import exceptions as sdk_exc

from osc_backup.common import tags
from osc_backup.common.progress import Reporter
from osc_backup.procedures import leftovers
from osc_backup.tests.unit import base
from osc_backup.tests.unit import fakes
from osc_backup.tests.unit.test_secret import make_km

RUN = tags.Run(run_id='0123456789ab')
OTHER = tags.Run(run_id='fedcba987654')
PROJECT = 'p1'
KMS = 'http://kms.example/v1/secrets/'


def secret(name, uuid):
    return _secret.Secret.existing(
        name=name, secret_ref=KMS + uuid, status='ACTIVE',
        created='2026-01-01T00:00:00',
    )


def image(owner=PROJECT, **attrs):
    img = fakes.image(**attrs)
    img.owner = owner  # the fake generator draws one via its alias
    return img


class CloudTestCase(base.TestCase):
    """A project holding one of everything an interrupted run can leave,
    and look-alikes that must never be touched."""

    def setUp(self):
        super().setUp()
        self.bs, self.image_proxy = fakes.make_proxies()
        self.km = make_km()
        self.conn = mock.Mock(
            block_storage=self.bs, image=self.image_proxy,
            key_manager=self.km, current_project_id=PROJECT,
        )
        self.err = io.StringIO()
        self.reporter = Reporter(self.err, progress=False)
        tmp_md = RUN.temporary_metadata('src')
        # what run RUN left
        self.tmp_vol = fakes.volume(
            name=RUN.temporary_name('volume', 'db'), metadata=tmp_md
        )
        self.tmp_snap = fakes.snapshot(
            name=RUN.temporary_name('snapshot', 'db'), metadata=tmp_md
        )
        # Cinder's backup restore replaced the target's metadata
        self.target = fakes.volume(
            name=RUN.temporary_name('restore', 'db-restore-x'),
            metadata={'app': 'db'},
        )
        self.upload = image(
            name=RUN.temporary_name('image', 'db'),
            # the stale record Cinder copied from the volume: another run
            properties={'osc_backup_run_id': 'aaaaaaaaaaaa'},
        )
        self.root = image(
            name=RUN.temporary_name('root', 'web'),
            properties={'osc_backup_run_id': RUN.run_id},
        )
        self.key = secret(
            RUN.key_name('img'), '11111111-0000-4000-8000-000000000001'
        )
        # another run's
        self.other_vol = fakes.volume(
            name=OTHER.temporary_name('volume', 'db'),
            metadata=OTHER.temporary_metadata('src'),
        )
        # look-alikes: never touched
        self.user_vols = [
            fakes.volume(name='db', metadata=tmp_md),  # our metadata only
            fakes.volume(name='osc-backup-tmp-volume-of-db'),  # no run tag
            fakes.volume(  # a run tag, but its metadata says another run
                name=RUN.temporary_name('volume', 'x'),
                metadata=OTHER.temporary_metadata('src'),
            ),
            fakes.volume(  # ... or another tool
                name=RUN.temporary_name('volume', 'y'),
                metadata={'osc_backup_tool': 'something-else'},
            ),
        ]
        self.user_images = [
            image(name='db-backup-x',
                        properties={'osc_backup_run_id': RUN.run_id}),
            image(name='osc-backup-tmp-image-of-db'),
            # shared with us by another project
            image(name=RUN.temporary_name('image', 'z'),
                        owner='someone-else'),
            # a finished image restore: uses the key below
            image(name='restored', owner=PROJECT, properties={
                'cinder_encryption_key_id':
                    '22222222-0000-4000-8000-000000000002',
            }),
        ]
        self.user_secrets = [
            secret('osc-backup-key-of-img', '33333333-0000-4000-8000-00000'
                   '0000003'),
            secret(RUN.key_name('restored'),
                   '22222222-0000-4000-8000-000000000002'),  # in use
            secret(None, '44444444-0000-4000-8000-000000000004'),
        ]
        self.bs.volumes.return_value = [
            self.tmp_vol, self.target, self.other_vol, *self.user_vols,
        ]
        self.bs.snapshots.return_value = [self.tmp_snap, fakes.snapshot()]
        self.image_proxy.images.return_value = [
            self.upload, self.root, *self.user_images,
        ]
        self.km.secrets.return_value = [self.key, *self.user_secrets]
        self.bs.get_volume.side_effect = lambda vid: fakes.volume(
            id=vid, status='available'
        )
        self.bs.get_snapshot.side_effect = lambda sid: fakes.snapshot(
            id=sid, status='available'
        )

    def find(self, run_id=None):
        return leftovers.find_leftovers(self.conn, run_id, self.reporter)


class TestFind(CloudTestCase):
    def test_one_of_each_in_removal_order(self):
        found = self.find(RUN.run_id)
        self.assertEqual(
            [('image', self.upload.id), ('image', self.root.id),
             ('volume', self.tmp_vol.id), ('volume', self.target.id),
             ('snapshot', self.tmp_snap.id), ('secret', self.key.secret_id)],
            [(lo.kind, lo.id) for lo in found],
        )
        self.assertEqual({RUN.run_id}, {lo.run_id for lo in found})
        what = {lo.id: lo.what for lo in found}
        self.assertIn('never got its record', what[self.upload.id])
        self.assertIn('Nova root snapshot', what[self.root.id])
        self.assertIn('restore that did not finish', what[self.target.id])
        self.assertIn('no image uses it', what[self.key.secret_id])

    def test_all_runs(self):
        found = {lo.id for lo in self.find()}
        self.assertIn(self.other_vol.id, found)
        self.assertIn(self.tmp_vol.id, found)

    def test_look_alikes_never_found(self):
        found = {lo.id for lo in self.find()}
        for res in (*self.user_vols, *self.user_images):
            self.assertNotIn(res.id, found, res.name)
        for res in self.user_secrets:
            self.assertNotIn(res.secret_id, found, res.name)

    def test_no_key_manager_still_finds_the_rest(self):
        self.km.secrets.side_effect = sdk_exc.SDKException(
            'no key-manager endpoint'
        )
        found = self.find(RUN.run_id)
        self.assertEqual(5, len(found))
        self.assertIn('could not look for leftover secrets',
                      self.err.getvalue())


class TestRemove(CloudTestCase):
    def test_removes_only_what_was_found(self):
        found = self.find(RUN.run_id)
        failed = leftovers.remove_leftovers(
            self.conn, found, self.reporter, interval=0
        )
        self.assertEqual([], failed)
        self.assertEqual(
            [self.upload.id, self.root.id],
            [c.args[0] for c in self.image_proxy.delete_image.call_args_list],
        )
        self.assertEqual(
            [self.tmp_vol.id, self.target.id],
            [c.args[0].id for c in self.bs.delete_volume.call_args_list],
        )
        self.assertEqual(
            [self.tmp_snap.id],
            [c.args[0].id for c in self.bs.delete_snapshot.call_args_list],
        )
        self.km.delete_secret.assert_called_once_with(
            self.key.secret_id, ignore_missing=True
        )
        self.assertEqual({'deleted'}, {lo.result for lo in found})

    def test_failures_reported_with_shell_quoted_commands(self):
        def del_snap(s, **k):
            raise sdk_exc.HttpException('snapshot busy')

        self.bs.delete_snapshot.side_effect = del_snap
        found = self.find(RUN.run_id)
        failed = leftovers.remove_leftovers(
            self.conn, found, self.reporter, interval=0
        )
        self.assertEqual([self.tmp_snap.id], [lo.id for lo in failed])
        self.assertTrue(failed[0].result.startswith('failed'))
        self.assertEqual(
            f'openstack volume snapshot delete {self.tmp_snap.id}',
            failed[0].remove_command,
        )
        # the rest went on
        self.km.delete_secret.assert_called_once()

    def test_volume_with_a_leftover_snapshot_goes_after_it(self):
        snapshot_gone = []

        def del_vol(v, **k):
            if v.id == self.tmp_vol.id and not snapshot_gone:
                raise sdk_exc.BadRequestException('has dependent snapshots')

        self.bs.delete_volume.side_effect = del_vol
        self.bs.delete_snapshot.side_effect = (
            lambda s, **k: snapshot_gone.append(s.id)
        )
        found = self.find(RUN.run_id)
        failed = leftovers.remove_leftovers(
            self.conn, found, self.reporter, interval=0
        )
        self.assertEqual([], failed)
        self.assertEqual(
            [self.tmp_vol.id, self.target.id, self.tmp_vol.id],
            [c.args[0].id for c in self.bs.delete_volume.call_args_list],
        )

    def test_remove_commands(self):
        by_id = {lo.id: lo for lo in self.find(RUN.run_id)}
        self.assertEqual(
            f'openstack secret delete {KMS}{self.key.secret_id}',
            by_id[self.key.secret_id].remove_command,
        )
        self.assertEqual(
            f'openstack image delete {self.root.id}',
            by_id[self.root.id].remove_command,
        )
        hostile = leftovers.Leftover(
            'volume', "x; rm -rf ~ 'y'", None, None, RUN.run_id, None
        )
        self.assertEqual(
            "openstack volume delete 'x; rm -rf ~ '\"'\"'y'\"'\"''",
            hostile.remove_command,
        )
