import io
import json
import os
import tempfile
from unittest import mock

from keystoneauth1 import exceptions as ksa_exc
from openstack import exceptions as sdk_exc
from openstack.compute.v2 import server as _server
from openstack.compute.v2 import volume_attachment as _attachment
from openstack.test import fakes as sdk_fakes

from osc_backup.common import errors
from osc_backup.common import tags
from osc_backup.common.progress import Reporter
from osc_backup.procedures import server_backup
from osc_backup.procedures import volume_image
from osc_backup.tests.unit import base
from osc_backup.tests.unit import fakes

FLAVOR = {
    'original_name': 'm1.tiny', 'vcpus': 1, 'ram': 512, 'disk': 1,
    'ephemeral': 0, 'swap': 0, 'extra_specs': {},
}


def server(**attrs):
    defaults = {
        'name': 'web',
        'status': 'ACTIVE',
        'task_state': None,
        'image': {'id': 'img-base'},
        'flavor': FLAVOR,
        'key_name': 'k',
        'addresses': {},
        'security_groups': [{'name': 'default'}],
        'metadata': {'role': 'web'},
        'availability_zone': 'nova',
        'root_device_name': None,
    }
    defaults.update(attrs)
    return sdk_fakes.generate_fake_resource(_server.Server, **defaults)


def attachment(volume_id, device):
    return sdk_fakes.generate_fake_resource(
        _attachment.VolumeAttachment, volume_id=volume_id, device=device,
        delete_on_termination=False, tag=None,
    )


def compute_proxy():
    proxy = fakes.make_compute_proxy()
    proxy.volume_attachments.return_value = []
    return proxy


class ServerTestCase(base.TestCase):
    def setUp(self):
        super().setUp()
        self.bs, self.image_proxy = fakes.make_proxies()
        self.compute = compute_proxy()
        self.conn = mock.Mock(
            block_storage=self.bs, image=self.image_proxy,
            compute=self.compute,
        )
        self.err = io.StringIO()
        self.reporter = Reporter(stream=self.err, progress=False)
        self.run_ctx = tags.Run(run_id='0123456789ab')
        patcher = mock.patch(
            'osc_backup.common.microversion.snapshot_microversion',
            return_value='3.65',
        )
        patcher.start()
        self.addCleanup(patcher.stop)
        self.volumes = {}
        # the temporaries of the in-use volume path
        self.snap = fakes.snapshot(status='creating')
        self.tmp_vol = fakes.volume(status='creating', name='tmp')
        fakes.cinder_makes_snapshots(self.bs, self.snap)
        self.bs.create_volume.return_value = self.tmp_vol
        self.volumes[self.tmp_vol.id] = self.tmp_vol
        self.bs.get_snapshot.return_value = self.snap
        self.bs.get_volume.side_effect = lambda vid: self.volumes[vid]
        # the services API answers: no backup service -> image path
        self.bs.services.return_value = []
        self.bs.wait_for_status.side_effect = self._bs_wait
        self.root_image = fakes.image(status='queued', name='root')
        self.root_active = fakes.image(
            id=self.root_image.id, status='active', name='root'
        )
        self.vol_image = fakes.image(status='active', name='vol')
        images = {
            self.root_image.id: self.root_image,
            self.vol_image.id: self.vol_image,
        }
        self.image_proxy.get_image.side_effect = lambda i: images[i]
        self.image_proxy.wait_for_status.side_effect = (
            lambda res, **kw: self.root_active
            if res.id == self.root_image.id else res
        )
        self.image_proxy.update_image.return_value = self.vol_image
        self.image_proxy.patch.return_value = fakes.response(200)
        self.bs.upload_volume_to_image.return_value = {
            'image_id': self.vol_image.id
        }
        patcher = mock.patch.object(
            _server.Server, 'create_image', return_value=self.root_image.id
        )
        self.create_image = patcher.start()
        self.addCleanup(patcher.stop)

    def _bs_wait(self, res, status, **kwargs):
        res.status = status
        return res

    def volume_record(self):
        """The record the volume path wrote onto the volume's image."""
        for call in reversed(self.image_proxy.patch.call_args_list):
            if call.args[0] == f'/images/{self.vol_image.id}':
                ops = json.loads(call.kwargs['data'])
                return {
                    op['path'][1:]: op['value'] for op in ops
                    if op['op'] == 'add'
                }
        self.fail('no record was written onto the volume image')

    def attach(self, device, **attrs):
        vol = fakes.volume(**{'status': 'in-use', **attrs})
        self.volumes[vol.id] = vol
        current = list(self.compute.volume_attachments.return_value)
        self.compute.volume_attachments.return_value = [
            *current, attachment(vol.id, device)
        ]
        return vol

    def prepare(self, srv, **opts):
        return server_backup.prepare(
            self.conn, srv, server_backup.Options(interval=0, **opts),
            self.run_ctx,
        )

    def run_backup(self, srv, **opts):
        options = server_backup.Options(interval=0, **opts)
        plan = server_backup.prepare(self.conn, srv, options, self.run_ctx)
        return server_backup.backup_server(
            self.conn, plan, options, run=self.run_ctx,
            reporter=self.reporter,
        )


class TestFindServer(ServerTestCase):
    def test_found(self):
        srv = server()
        self.compute.find_server.return_value = srv
        self.assertIs(srv, server_backup.find_server(self.conn, 'web'))
        self.compute.find_server.assert_called_once_with(
            'web', ignore_missing=False
        )

    def test_errors(self):
        for exc, text in (
            (sdk_exc.NotFoundException('x'), "No server with name or ID"),
            (sdk_exc.DuplicateResource('x'), 'use its ID'),
            (ksa_exc.EndpointNotFound('x'), 'no compute (Nova) service'),
            (sdk_exc.EndpointNotFound('x'), 'no compute (Nova) service'),
        ):
            self.compute.find_server.side_effect = exc
            err = self.assertRaises(
                errors.InvalidInput, server_backup.find_server, self.conn,
                'web',
            )
            self.assertIn(text, str(err))


class TestPrepare(ServerTestCase):
    def assert_nothing_created(self):
        self.create_image.assert_not_called()
        self.bs.create_backup.assert_not_called()
        self.bs.upload_volume_to_image.assert_not_called()
        self.bs.post.assert_not_called()

    def test_image_booted_without_volumes(self):
        plan = self.prepare(server())
        self.assertFalse(plan.volume_backed)
        self.assertEqual(['root-disk'], [d.role for d in plan.disks])
        self.assertEqual(0, plan.disks[0].boot_index)
        self.assertEqual('crash-consistent', plan.consistency)
        self.assertEqual([], plan.notes)

    def test_image_booted_with_volumes(self):
        vol = self.attach('/dev/vdb', name='data')
        plan = self.prepare(server())
        self.assertEqual(
            ['root-disk', 'volume'], [d.role for d in plan.disks]
        )
        self.assertIsNone(plan.disks[1].boot_index)
        self.assertIs(vol, plan.disks[1].volume)
        self.assertEqual('image', plan.disks[1].choice.method)
        text = ' '.join(plan.notes)
        self.assertIn('copies only the root disk', text)
        self.assertIn(vol.id, text)
        self.assertIn('not at one moment', text)

    def test_no_volumes_lists_the_skipped(self):
        vol = self.attach('/dev/vdb')
        plan = self.prepare(server(), volumes=False)
        self.assertEqual(['root-disk'], [d.role for d in plan.disks])
        self.assertEqual([vol], [d.volume for d in plan.skipped])
        self.assertIn('NOT backed up', ' '.join(plan.notes))

    def test_volume_backed(self):
        data = self.attach('/dev/vdb')
        root = self.attach('/dev/vda')
        plan = self.prepare(server(image={}))
        self.assertTrue(plan.volume_backed)
        self.assertEqual(
            [root, data], [d.volume for d in plan.disks]
        )
        self.assertEqual([0, None], [d.boot_index for d in plan.disks])
        self.assertIn('an image with no data', plan.notes[0])
        self.assertIn(root.id, plan.notes[0])

    def test_volume_backed_root_device_name_wins(self):
        self.attach('/dev/vda')
        root = self.attach('/dev/sdb')
        plan = self.prepare(
            server(image={}, root_device_name='/dev/sdb')
        )
        booted = [d.volume for d in plan.disks if d.boot_index == 0]
        self.assertEqual([root], booted)

    def test_volume_backed_no_volumes_refused(self):
        self.attach('/dev/vda')
        err = self.assertRaises(
            errors.InvalidInput, self.prepare, server(image={}),
            volumes=False,
        )
        self.assertIn('nothing to back up', str(err))
        self.assert_nothing_created()

    def test_shutoff_is_offline(self):
        self.attach('/dev/vdb')
        plan = self.prepare(server(status='SHUTOFF'))
        self.assertEqual('offline', plan.consistency)
        self.assertNotIn('not at one moment', ' '.join(plan.notes))

    def test_ephemeral_and_swap_noted(self):
        flavor = dict(FLAVOR, ephemeral=2, swap=512)
        plan = self.prepare(server(flavor=flavor))
        text = ' '.join(plan.notes)
        self.assertIn('a 2 GiB ephemeral disk', text)
        self.assertIn('512 MiB of swap', text)

    def test_bad_states_refused(self):
        for srv, text in (
            (server(status='ERROR'), "is 'ERROR'"),
            (server(status='SHELVED_OFFLOADED'), 'only servers that are'),
            (server(task_state='image_snapshot'), 'busy'),
        ):
            err = self.assertRaises(errors.InvalidInput, self.prepare, srv)
            self.assertIn(text, str(err))
        self.assert_nothing_created()

    def test_bad_flag_mixes(self):
        for opts, text in (
            ({'method': 'backup', 'download': '/tmp'}, '--via-image'),
            ({'method': 'image', 'incremental': True}, '--via-backup'),
            ({'incremental': True, 'download': '/tmp'}, 'cannot be combined'),
            ({'properties': {'osc_backup_x': '1'}}, 'reserved'),
            ({'download': '/nonexistent/dir'}, 'does not exist'),
        ):
            err = self.assertRaises(
                errors.InvalidInput, self.prepare, server(), **opts
            )
            self.assertIn(text, str(err))
        self.assert_nothing_created()

    def test_manifest_never_overwritten(self):
        with tempfile.NamedTemporaryFile() as existing:
            err = self.assertRaises(
                errors.InvalidInput, self.prepare, server(),
                manifest=existing.name,
            )
        self.assertIn('never overwrites', str(err))

    def test_bad_volume_stops_before_anything(self):
        self.attach('/dev/vdb', status='error')
        err = self.assertRaises(errors.InvalidInput, self.prepare, server())
        self.assertIn("'error'", str(err))
        self.assert_nothing_created()

    def test_unknown_attached_volume(self):
        self.compute.volume_attachments.return_value = [
            attachment('ghost', '/dev/vdb')
        ]
        self.bs.get_volume.side_effect = sdk_exc.NotFoundException('x')
        err = self.assertRaises(errors.InvalidInput, self.prepare, server())
        self.assertIn('ghost', str(err))

    def test_backup_options_need_a_service(self):
        self.attach('/dev/vdb')
        err = self.assertRaises(
            errors.InvalidInput, self.prepare, server(), incremental=True
        )
        self.assertIn('--incremental need the Cinder backup path', str(err))

    def test_download_default_manifest_and_space(self):
        with tempfile.TemporaryDirectory() as d:
            plan = self.prepare(server(), download=d)
            self.assertTrue(plan.manifest.startswith(d))
            self.assertTrue(plan.manifest.endswith('.server.json'))
            with mock.patch(
                'osc_backup.download.check_free_space',
                side_effect=errors.InvalidInput('Not enough free space'),
            ):
                self.assertRaises(
                    errors.InvalidInput, self.prepare, server(), download=d
                )

    def test_dry_run_steps(self):
        self.attach('/dev/vdb')
        opts = server_backup.Options()
        plan = self.prepare(server())
        steps = server_backup.plan_steps(plan, opts, self.run_ctx)
        self.assertIn('createImage', steps[0])
        self.assertIn("--via-image", steps[1])
        self.assert_nothing_created()


class TestBackupServer(ServerTestCase):
    def test_root_and_volume(self):
        srv = server()
        vol = self.attach('/dev/vdb', name='data')
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, 'm.json')
            result = self.run_backup(srv, manifest=path)
            with open(path) as f:
                manifest = json.load(f)
        # root disk: createImage with the record as metadata
        (_session, name, metadata), _ = self.create_image.call_args
        self.assertEqual(srv.id, metadata['osc_backup_server_id'])
        self.assertEqual('root-disk', metadata['osc_backup_server_disk'])
        self.assertEqual('0', metadata['osc_backup_boot_index'])
        self.assertEqual('server-image', metadata['osc_backup_method'])
        self.assertEqual('crash-consistent', metadata[
            'osc_backup_consistency'
        ])
        self.assertEqual('osc-backup-tmp-0123456789ab-root-of-web', name)
        # final name with the record, once active
        root_patch = next(
            json.loads(c.kwargs['data'])
            for c in self.image_proxy.patch.call_args_list
            if c.args[0] == f'/images/{self.root_image.id}'
        )
        final = [op['value'] for op in root_patch if op['path'] == '/name']
        self.assertRegex(final[0], r'^web-backup-')
        # the volume went through the volume procedure, with the record
        self.bs.post.assert_called_once()
        props = self.volume_record()
        self.assertEqual(srv.id, props['osc_backup_server_id'])
        self.assertEqual('/dev/vdb', props['osc_backup_device'])
        self.assertEqual(vol.id, props['osc_backup_source_volume_id'])
        self.assertEqual(
            [
                ('root-disk', 'image', self.root_image.id),
                ('volume', 'image', self.vol_image.id),
            ],
            [(a['disk'], a['artifact'], a['id'])
             for a in result['artifacts']],
        )
        self.assertEqual([path], result['files'])
        self.assertEqual(srv.id, manifest['server']['id'])
        self.assertEqual('m1.tiny', manifest['server']['flavor'][
            'original_name'
        ])
        self.assertEqual('k', manifest['server']['key_name'])
        self.assertEqual(['default'], manifest['server']['security_groups'])
        self.assertEqual(
            [self.root_image.id, self.vol_image.id],
            [d['artifact']['image_id'] for d in manifest['disks']],
        )
        self.assertEqual(vol.id, manifest['disks'][1]['volume']['id'])
        self.assertIn('WARNING', self.err.getvalue())

    def test_shutoff_labels_everything_offline(self):
        self.attach('/dev/vdb')
        result = self.run_backup(server(status='SHUTOFF'))
        self.assertEqual(
            ['offline', 'offline'],
            [a['consistency'] for a in result['artifacts']],
        )
        props = self.volume_record()
        self.assertEqual('offline', props['osc_backup_consistency'])
        self.assertNotIn('crash-consistent', self.err.getvalue())

    def test_failed_root_snapshot_deletes_the_image(self):
        self.image_proxy.wait_for_status.side_effect = (
            sdk_exc.ResourceFailure('killed')
        )
        killed = fakes.image(id=self.root_image.id, status='killed')
        self.image_proxy.get_image.side_effect = lambda i: killed
        err = self.assertRaises(
            errors.WaitError, self.run_backup, server()
        )
        self.assertIn('killed', str(err))
        self.image_proxy.delete_image.assert_called_once_with(
            self.root_image.id, ignore_missing=True
        )

    def test_nova_refusal_is_one_error(self):
        self.create_image.side_effect = sdk_exc.ConflictException(
            'Cannot createImage while it is in task_state image_snapshot'
        )
        err = self.assertRaises(
            errors.BackupError, self.run_backup, server()
        )
        self.assertIn('Nova refused to snapshot server', str(err))
        self.image_proxy.delete_image.assert_not_called()

    def test_failed_volume_keeps_and_names_the_root_image(self):
        self.attach('/dev/vdb')
        self.bs.post.side_effect = sdk_exc.HttpException(
            'over quota'
        )
        err = self.assertRaises(
            Exception, self.run_backup, server()
        )
        self.assertIn(self.root_image.id, str(err))
        self.assertIn('kept', str(err))
        self.image_proxy.delete_image.assert_not_called()

    def test_volume_backed_backs_up_volumes_only(self):
        root = self.attach('/dev/vda', is_bootable=True)
        result = self.run_backup(server(image={}))
        self.create_image.assert_not_called()
        self.assertTrue(result['volume_backed'])
        self.assertEqual(
            [('volume', root.id, 0)],
            [(a['disk'], a['volume_id'], a['boot_index'])
             for a in result['artifacts']],
        )
        props = self.volume_record()
        self.assertEqual('0', props['osc_backup_boot_index'])

    def test_download_goes_through_the_download_path(self):
        with tempfile.TemporaryDirectory() as d, mock.patch.object(
            volume_image, 'download_image', return_value=[d + '/root.raw']
        ) as download:
            result = self.run_backup(server(), download=d)
            self.assertTrue(os.path.exists(result['manifest']))
        download.assert_called_once_with(
            self.conn, self.root_image.id, d, self.reporter
        )
        self.assertEqual(d + '/root.raw', result['files'][0])

    def test_interrupt_names_what_is_kept(self):
        self.attach('/dev/vdb')
        self.bs.post.side_effect = errors.Interrupted('SIGINT')
        self.assertRaises(KeyboardInterrupt, self.run_backup, server())
        self.assertIn(self.root_image.id, self.err.getvalue())
        self.assertIn('kept (complete)', self.err.getvalue())
        self.image_proxy.delete_image.assert_not_called()

    def test_root_snapshot_named_with_the_run_tag_until_complete(self):
        srv = server()
        result = self.run_backup(srv, name='nightly')
        (_session, name, _metadata), _ = self.create_image.call_args
        self.assertEqual('osc-backup-tmp-0123456789ab-root-of-web', name)
        ops = json.loads(self.image_proxy.patch.call_args.kwargs['data'])
        self.assertIn(
            {'op': 'replace', 'path': '/name', 'value': 'nightly'}, ops
        )
        self.assertEqual(
            self.root_image.id, result['artifacts'][0]['id']
        )

    def test_inherited_record_is_removed(self):
        # the server booted from an image osc-backup made from a volume
        self.root_active.properties = {
            'osc_backup_source_volume_id': 'old-volume',
            'osc_backup_volume_size_gb': '1',
            'osc_backup_server_id': 'x',  # ours, rewritten by createImage
            'hw_disk_bus': 'virtio',
        }
        srv = server()
        self.run_backup(srv)
        path, = self.image_proxy.patch.call_args.args
        self.assertEqual(f'/images/{self.root_image.id}', path)
        ops = json.loads(self.image_proxy.patch.call_args.kwargs['data'])
        removed = [op['path'] for op in ops if op['op'] == 'remove']
        self.assertEqual(
            ['/osc_backup_source_volume_id', '/osc_backup_volume_size_gb'],
            removed,
        )
        added = {op['path'][1:]: op['value'] for op in ops
                 if op['op'] == 'add'}
        self.assertEqual(srv.id, added['osc_backup_server_id'])

    def test_record_failure_keeps_the_root_image(self):
        self.image_proxy.patch.return_value = fakes.response(
            413, {'message': 'quota'}
        )
        err = self.assertRaises(errors.BackupError, self.run_backup, server())
        self.assertIn(self.root_image.id, str(err))
        self.assertIn('complete and kept', str(err))
        self.image_proxy.delete_image.assert_not_called()
