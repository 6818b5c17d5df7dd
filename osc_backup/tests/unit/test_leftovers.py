import io
from unittest import mock

from openstack import exceptions as sdk_exc
from openstack.compute.v2 import server as _server
from openstack.key_manager.v1 import secret as _secret
from openstack.test import fakes as sdk_fakes

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
        self.compute = fakes.make_compute_proxy()
        self.compute.servers.return_value = []
        self.conn = mock.Mock(
            block_storage=self.bs, image=self.image_proxy,
            key_manager=self.km, current_project_id=PROJECT,
            compute=self.compute,
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


def server(name, metadata=None, **attrs):
    return sdk_fakes.generate_fake_resource(
        _server.Server, name=name, metadata=metadata or {},
        status='ACTIVE', attached_volumes=attrs.pop('attached_volumes', []),
        image=attrs.pop('image', {}), **attrs,
    )


def restore_md(run, **extra):
    """What backup server restore gives its server (and, renamed, its
    volumes; its uploaded root image has the same in its properties)."""
    return {'osc_backup_tool': 'osc-backup', 'osc_backup_run_id': run.run_id,
            'osc_backup_restored_from': 'run:aaaaaaaaaaaa', **extra}


class TestRestoredServers(CloudTestCase):
    """A server restore of run RUN killed after it created the server:
    and servers that look like one but are not."""

    def setUp(self):
        super().setUp()
        name = RUN.temporary_name('restore', 'web')
        # the restore was killed while it gave the final names: the data
        # volume and the uploaded root image had theirs already
        self.renamed_vol = fakes.volume(name='web-vdb',
                                        metadata=restore_md(RUN))
        self.user_vol = fakes.volume(name='mine', metadata={})
        self.renamed_root = image(name='web-root', properties=restore_md(
            RUN, osc_backup_server_disk='root-disk'))
        self.restored = server(name, restore_md(RUN), attached_volumes=[
            {'id': self.renamed_vol.id}, {'id': self.target.id},
            {'id': self.user_vol.id},
        ], image={'id': self.renamed_root.id})
        self.look_alikes = [
            # a user's server named like one, without the metadata
            server(name),
            # ... with the tool's metadata but not the restore mark
            server(name, {'osc_backup_tool': 'osc-backup',
                          'osc_backup_run_id': RUN.run_id}),
            # the restore mark, another run's ID
            server(name, restore_md(OTHER)),
            # another tool
            server(name, restore_md(RUN, osc_backup_tool='other')),
            # another role of the run's temporary names
            server(RUN.temporary_name('root', 'web'), restore_md(RUN)),
            # a finished restore: its final name
            server('web', restore_md(RUN)),
        ]
        self.other_run = server(OTHER.temporary_name('restore', 'db'),
                                restore_md(OTHER))
        self.compute.servers.return_value = [
            *self.look_alikes, self.restored, self.other_run]
        volumes = {v.id: v for v in (
            self.renamed_vol, self.user_vol, self.target)}
        self.bs.get_volume.side_effect = lambda vid: volumes.get(
            vid) or fakes.volume(id=vid, status='available')
        self.image_proxy.get_image.side_effect = (
            lambda iid: {self.renamed_root.id: self.renamed_root}[iid])

    def test_matcher(self):
        self.assertEqual(RUN.run_id, leftovers.unfinished_restore(
            self.restored.name, self.restored.metadata))
        for other in self.look_alikes:
            self.assertIsNone(leftovers.unfinished_restore(
                other.name, other.metadata), other)

    def test_server_first_then_what_it_used(self):
        found = self.find(RUN.run_id)
        self.assertEqual(
            [('server', self.restored.id), ('image', self.renamed_root.id),
             ('volume', self.renamed_vol.id)],
            [(lo.kind, lo.id) for lo in found
             if lo.id in (self.restored.id, self.renamed_root.id,
                          self.renamed_vol.id)],
        )
        self.assertEqual('server', found[0].kind)
        ids = [lo.id for lo in found]
        # the temporary-named target once only; the user's volume never
        self.assertEqual(1, ids.count(self.target.id))
        self.assertNotIn(self.user_vol.id, ids)
        for other in (*self.look_alikes, self.other_run):
            self.assertNotIn(other.id, ids)
        self.assertIn(self.other_run.id, [lo.id for lo in self.find()])
        by_id = {lo.id: lo for lo in found}
        self.assertIn('restore that did not finish',
                      by_id[self.restored.id].what)
        self.assertEqual(
            f'openstack server delete {self.restored.id}',
            by_id[self.restored.id].remove_command)

    def test_server_deleted_before_its_volumes(self):
        order = mock.Mock()
        order.attach_mock(self.compute.delete_server, 'server')
        order.attach_mock(self.bs.delete_volume, 'volume')
        order.attach_mock(self.image_proxy.delete_image, 'image')
        self.compute.get_server.return_value = self.restored
        found = self.find(RUN.run_id)
        failed = leftovers.remove_leftovers(
            self.conn, found, self.reporter, interval=0)
        self.assertEqual([], failed)
        self.assertEqual(
            mock.call.server(self.restored, ignore_missing=True),
            order.mock_calls[0])
        self.compute.delete_server.assert_called_once()
        deleted = [c.args[0].id for c in self.bs.delete_volume.call_args_list]
        self.assertIn(self.renamed_vol.id, deleted)
        self.assertNotIn(self.user_vol.id, deleted)

    def test_no_compute_still_finds_the_rest(self):
        self.compute.servers.side_effect = sdk_exc.SDKException('no nova')
        found = self.find(RUN.run_id)
        self.assertEqual(6, len(found))
        self.assertIn('could not look for leftover servers',
                      self.err.getvalue())

    def test_key_of_a_removed_image_goes_with_it(self):
        # a temporary upload of the run refers to the key the run stored:
        # both are leftovers (the image is removed first)
        key_id = '55555555-0000-4000-8000-000000000005'
        self.upload.properties['cinder_encryption_key_id'] = key_id
        self.km.secrets.return_value.append(
            secret(RUN.key_name('db'), key_id))
        found = [(lo.kind, lo.id) for lo in self.find(RUN.run_id)]
        self.assertIn(('secret', key_id), found)
        self.assertLess(found.index(('image', self.upload.id)),
                        found.index(('secret', key_id)))
