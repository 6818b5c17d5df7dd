import io
import json
import os
import shutil
import tempfile
import threading
from unittest import mock

from keystoneauth1 import exceptions as ksa_exc
from openstack import exceptions as sdk_exc
from openstack.compute.v2 import server as _server
from openstack.compute.v2 import volume_attachment as _attachment
from openstack.test import fakes as sdk_fakes

from osc_backup.common import backup_set
from osc_backup.common import errors
from osc_backup.common import tags
from osc_backup.common.progress import Reporter
from osc_backup.procedures import server_backup
from osc_backup.procedures import server_manifest
from osc_backup.procedures import server_plan
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
        # every snapshot Cinder made, by ID (the capture's, Nova's)
        self.snaps = {}
        self.snaps_lock = threading.Lock()
        fakes.cinder_makes_snapshots(self.bs, None)
        self.bs.post.side_effect = self._post_snapshot
        self.bs.get_snapshot.side_effect = lambda sid: self.snaps[sid]
        # the temporary volume of the image path
        self.tmp_vol = fakes.volume(status='creating', name='tmp')
        self.bs.create_volume.return_value = self.tmp_vol
        self.volumes[self.tmp_vol.id] = self.tmp_vol
        self.bs.get_volume.side_effect = lambda vid: self.volumes[vid]
        # the services API answers: no backup service -> image path
        self.bs.services.return_value = []
        self.bs.wait_for_status.side_effect = self._bs_wait
        self.root_image = fakes.image(status='queued', name='root')
        self.root_active = fakes.image(
            id=self.root_image.id, status='active', name='root'
        )
        self.vol_image = fakes.image(status='active', name='vol')
        self.images = images = {
            self.root_image.id: self.root_image,
            self.vol_image.id: self.vol_image,
        }
        self.image_proxy.get_image.side_effect = lambda i: images[i]
        # the root image's completion (record clean-up, final name)
        self.image_proxy.patch.return_value = mock.Mock(status_code=200)
        self.image_proxy.wait_for_status.side_effect = (
            lambda res, **kw: self.root_active
            if res.id == self.root_image.id else res
        )
        self.image_proxy.update_image.return_value = self.vol_image
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

    def _post_snapshot(self, url, json=None, **kwargs):
        """Cinder's POST /snapshots: a snapshot of the volume asked for."""
        assert url == '/snapshots', url
        snap = self.make_snapshot(json['snapshot']['volume_id'],
                                  name=json['snapshot']['name'])
        return fakes.response(202, {'snapshot': snap.to_dict()})

    def make_snapshot(self, volume_id, **attrs):
        # the capture requests snapshots from several threads at once
        with self.snaps_lock:
            n = len(self.snaps)
            self.snaps[n] = None
        snap = fakes.snapshot(**{
            'status': 'creating', 'volume_id': volume_id,
            'created_at': f'2026-12-03T07:00:0{n}.500000', **attrs,
        })
        with self.snaps_lock:
            del self.snaps[n]
            self.snaps[snap.id] = snap
        return snap

    def nova_makes_snapshots(self, *vols):
        """createImage of a volume-booted server: Nova's snapshots of
        ``vols`` and an image naming them; returns that image."""
        snaps = [
            self.make_snapshot(v.id, name='snapshot for x')
            for v in vols
        ]
        mapping = [{'snapshot_id': s.id, 'source_type': 'snapshot'}
                   for s in snaps]
        nova_image = fakes.image(
            status='active', size=0,
            properties={'block_device_mapping': json.dumps(mapping)},
        )
        self.images[nova_image.id] = nova_image
        self.create_image.return_value = nova_image.id
        return nova_image

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

    def root_patch(self):
        """The operations of the patch that completed the root image."""
        for call in reversed(self.image_proxy.patch.call_args_list):
            if call.args[0] == f'/images/{self.root_image.id}':
                return json.loads(call.kwargs['data'])
        self.fail('the root image was not patched')

    def attach(self, device, **attrs):
        vol = fakes.volume(**{'status': 'in-use', **attrs})
        self.volumes[vol.id] = vol
        current = list(self.compute.volume_attachments.return_value)
        self.compute.volume_attachments.return_value = [
            *current, attachment(vol.id, device)
        ]
        return vol

    def prepare(self, srv, **opts):
        return server_plan.prepare(
            self.conn, srv, server_plan.Options(interval=0, **opts),
            self.run_ctx,
        )

    def run_backup(self, srv, **opts):
        options = server_plan.Options(interval=0, **opts)
        plan = server_plan.prepare(self.conn, srv, options, self.run_ctx)
        return server_backup.backup_server(
            self.conn, plan, options, run=self.run_ctx,
            reporter=self.reporter,
        )


class TestFindServer(ServerTestCase):
    def test_found(self):
        srv = server()
        self.compute.find_server.return_value = srv
        self.assertIs(srv, server_plan.find_server(self.conn, 'web'))
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
                errors.InvalidInput, server_plan.find_server, self.conn,
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
                'osc_backup.common.backup_set.check_free_space',
                side_effect=errors.InvalidInput('Not enough free space'),
            ):
                self.assertRaises(
                    errors.InvalidInput, self.prepare, server(), download=d
                )

    def test_dry_run_steps(self):
        self.attach('/dev/vdb')
        opts = server_plan.Options()
        plan = self.prepare(server())
        steps = server_plan.plan_steps(plan, opts, self.run_ctx)
        self.assertIn('POST /snapshots for each of the 1', steps[0])
        self.assertIn('createImage', steps[1])
        self.assertIn('wait snapshots available', steps[2])
        self.assertIn('wait root disk image active', steps[3])
        self.assertIn('from its snapshot', steps[4])
        self.assertIn("--via-image", steps[4])
        self.assertIn('DELETE every snapshot', steps[5])
        self.assert_nothing_created()

    def test_dry_run_steps_pause_and_volume_backed(self):
        self.attach('/dev/vda')
        opts = server_plan.Options(pause=True)
        plan = self.prepare(server(image={}), pause=True)
        steps = server_plan.plan_steps(plan, opts, self.run_ctx)
        self.assertIn('pause', steps[0])
        self.assertIn(
            'createImage name=osc-backup-tmp-0123456789ab-nova-of-web',
            steps[1],
        )
        self.assertIn("'snapshot for osc-backup-tmp-0123456789ab-nova-of-web",
                      steps[1])
        self.assertIn('block_device_mapping', steps[2])
        self.assertIn('unpause', steps[3])
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
        # named with the run tag until complete (backup cleanup finds it)
        self.assertEqual('osc-backup-tmp-0123456789ab-root-of-web', name)
        ops = self.root_patch()
        final, = [op['value'] for op in ops if op['path'] == '/name']
        self.assertRegex(final, r'^web-backup-')
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
        server_manifest.validate(manifest)
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
        self.bs.upload_volume_to_image.side_effect = sdk_exc.HttpException(
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
        self.nova_makes_snapshots(root)
        result = self.run_backup(server(image={}))
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
        self.bs.upload_volume_to_image.side_effect = errors.Interrupted(
            'SIGINT'
        )
        exc = self.assertRaises(errors.Interrupted, self.run_backup,
                                server())
        self.assertIn(self.root_image.id, self.err.getvalue())
        self.assertIn('kept (complete)', self.err.getvalue())
        self.image_proxy.delete_image.assert_not_called()
        # the interrupt names them too (a row of backup run lists them)
        self.assertEqual('SIGINT', exc.signame)
        self.assertEqual([self.root_image.id], exc.kept)
        self.assertIn('kept (complete)', exc.detail)

    def test_inherited_record_is_removed(self):
        # the server booted from an image osc-backup made from a volume
        self.root_active.properties = {
            'osc_backup_source_volume_id': 'old-volume',
            'osc_backup_volume_size_gb': '1',
            'osc_backup_server_id': 'x',  # ours, rewritten by createImage
            'hw_disk_bus': 'virtio',
        }
        self.image_proxy.patch.return_value = mock.Mock(status_code=200)
        self.run_backup(server())
        path, = self.image_proxy.patch.call_args.args
        self.assertEqual(f'/images/{self.root_image.id}', path)
        ops = json.loads(self.image_proxy.patch.call_args.kwargs['data'])
        self.assertEqual(
            [{'op': 'remove', 'path': '/osc_backup_source_volume_id'},
             {'op': 'remove', 'path': '/osc_backup_volume_size_gb'}],
            [op for op in ops if op['path'] != '/name'],
        )

    def test_complete_root_gets_its_final_name(self):
        self.root_active.properties = {'hw_disk_bus': 'virtio'}
        self.image_proxy.patch.return_value = mock.Mock(status_code=200)
        self.run_backup(server(), name='nightly')
        (_session, name, _metadata), _ = self.create_image.call_args
        self.assertEqual('osc-backup-tmp-0123456789ab-root-of-web', name)
        ops = json.loads(self.image_proxy.patch.call_args.kwargs['data'])
        self.assertEqual(
            [{'op': 'replace', 'path': '/name', 'value': 'nightly'}], ops)

    def test_failed_completion_still_renames_the_kept_image(self):
        self.image_proxy.patch.return_value = mock.Mock(
            status_code=503, text='Service Unavailable', headers={},
        )
        err = self.assertRaises(errors.BackupError, self.run_backup,
                                server(), name='nightly')
        self.image_proxy.update_image.assert_any_call(
            self.root_image.id, name='nightly')
        self.assertIn("It is named 'nightly'.", str(err))
        self.image_proxy.delete_image.assert_not_called()


class TestManifest(ServerTestCase):
    """The server manifest read back: what a restore will trust."""

    def written(self, **opts):
        self.attach('/dev/vdb', name='data')
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        path = os.path.join(d, 'm.server.json')
        root_file = os.path.join(d, 'web.raw')
        with mock.patch.object(
            volume_image, 'download_image',
            side_effect=[[root_file, root_file + '.manifest.json'],
                         [os.path.join(d, 'data.raw')]],
        ):
            self.run_backup(server(), manifest=path, download=d, **opts)
        return d, path

    def test_round_trip_with_plain_file_names(self):
        d, path = self.written()
        manifest = server_manifest.load(path)
        self.assertEqual('osc-backup-server', manifest['format'])
        self.assertEqual(
            [['web.raw', 'web.raw.manifest.json'], ['data.raw']],
            [disk['artifact']['files'] for disk in manifest['disks']],
        )
        self.assertEqual(
            os.path.join(os.path.realpath(d), 'data.raw'),
            server_manifest.resolve(d, 'data.raw'),
        )

    def broken(self, d, path, change):
        with open(path) as f:
            manifest = json.load(f)
        change(manifest)
        bad = os.path.join(d, 'bad.json')
        with open(bad, 'w') as f:
            json.dump(manifest, f)
        return self.assertRaises(errors.InvalidInput, server_manifest.load,
                                 bad)

    def test_defects_are_one_line(self):
        def files(value):
            return lambda m: m['disks'][1]['artifact'].update(files=[value])

        d, path = self.written()
        for change, text in (
            (lambda m: m.update(format='osc-backup-image-set'),
             "format is not 'osc-backup-server'"),
            (lambda m: m.update(format_version=2), 'newer than'),
            (lambda m: m.update(format_version='1'),
             'format_version must be an integer'),
            (lambda m: m.pop('run_id'), 'run_id is missing'),
            (lambda m: m['server'].update(volume_backed='no'),
             'volume_backed must be true or false'),
            (lambda m: m['server'].update(id=''), 'server.id is empty'),
            (lambda m: m.update(disks=[]), 'disks is empty'),
            (lambda m: m['disks'][0].update(role='swap'), 'role must be'),
            (lambda m: m['disks'][0].update(boot_index=True),
             'boot_index must be an integer or null'),
            (lambda m: m['disks'][1]['volume'].update(size_gb=0),
             'size_gb must be positive'),
            (lambda m: m['disks'][1].pop('volume'),
             'disks[1].volume must be an object'),
            (lambda m: m['disks'][1]['artifact'].pop('image_id'),
             'neither an image_id nor a backup_id'),
            (lambda m: m['disks'].pop(0),
             'exactly one root-disk'),
            (files('../outside.raw'), 'not a plain name'),
            (files('/etc/passwd'), 'absolute path'),
            (files('.hidden'), 'not a plain name'),
            (files('a\nb.raw'), 'control characters'),
            (files('a\\..\\b'), 'backslash'),
        ):
            err = self.broken(d, path, change)
            self.assertIn(text, str(err))
            self.assertEqual(1, len(str(err).splitlines()), str(err))

    def test_not_json_not_ours_not_followed(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        path = os.path.join(d, 'm.json')
        with open(path, 'w') as f:
            f.write('{"format": ')
        err = self.assertRaises(errors.InvalidInput, server_manifest.load,
                                path)
        self.assertIn('is not JSON', str(err))
        link = os.path.join(d, 'link.json')
        os.symlink(path, link)
        err = self.assertRaises(errors.InvalidInput, server_manifest.load,
                                link)
        self.assertIn('Cannot read server manifest', str(err))
        err = self.assertRaises(errors.InvalidInput, server_manifest.load,
                                os.path.join(d, 'missing.json'))
        self.assertIn('Cannot read', str(err))

    def test_resolve_refuses_a_symlink_out(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        os.symlink('/etc', os.path.join(d, 'sets'))
        err = self.assertRaises(errors.InvalidInput, server_manifest.resolve,
                                d, 'sets/passwd')
        self.assertIn('leads out of', str(err))
        self.assertRaises(errors.InvalidInput, server_manifest.resolve,
                          d, '../x')


class TestRootRecord(ServerTestCase):
    """The root image's record after Nova copied the base image's."""

    def setUp(self):
        super().setUp()
        # the server booted from an image osc-backup made from a volume
        self.root_active.properties = {
            'osc_backup_source_volume_id': 'old-volume',
            'osc_backup_volume_size_gb': '1',
            'hw_disk_bus': 'virtio',
        }

    def test_failed_clean_up_keeps_and_names_the_image(self):
        self.attach('/dev/vdb')
        self.image_proxy.patch.side_effect = sdk_exc.HttpException(
            'Service Unavailable'
        )
        err = self.assertRaises(errors.BackupError, self.run_backup,
                                server())
        text = str(err)
        self.assertIn(f'Image {self.root_image.id}', text)
        self.assertIn('is active and kept', text)
        self.assertIn('Service Unavailable', text)
        self.assertIn(
            'openstack image unset --property osc_backup_source_volume_id '
            f'--property osc_backup_volume_size_gb {self.root_image.id}',
            text,
        )
        self.assertIn(
            f'kept (complete): root-disk -> image {self.root_image.id}', text
        )
        self.image_proxy.delete_image.assert_not_called()
        # a failing disk ends the run, as for any disk
        self.bs.upload_volume_to_image.assert_not_called()

    def test_refused_clean_up_keeps_the_image(self):
        self.image_proxy.patch.return_value = mock.Mock(
            status_code=403, text='Forbidden', headers={},
        )
        err = self.assertRaises(errors.BackupError, self.run_backup,
                                server())
        self.assertIn('is active and kept', str(err))
        self.image_proxy.delete_image.assert_not_called()

    def test_failed_download_names_the_kept_image(self):
        with tempfile.TemporaryDirectory() as d, mock.patch.object(
            volume_image, 'download_image',
            side_effect=errors.BackupError('disk full'),
        ):
            self.image_proxy.patch.return_value = mock.Mock(status_code=200)
            err = self.assertRaises(errors.BackupError, self.run_backup,
                                    server(), download=d)
        self.assertIn(
            f'kept (complete): root-disk -> image {self.root_image.id}',
            str(err),
        )
        self.image_proxy.delete_image.assert_not_called()

    def test_inherited_key_policy_is_not_kept(self):
        # a Nova that still copies the key properties of the base image
        self.root_active.properties = {
            'cinder_encryption_key_id': 'base-key',
            'cinder_encryption_key_deletion_policy': 'on_image_deletion',
        }
        self.image_proxy.patch.return_value = mock.Mock(status_code=200)
        self.run_backup(server())
        ops = json.loads(self.image_proxy.patch.call_args.kwargs['data'])
        self.assertEqual(
            [{'op': 'replace',
              'path': '/cinder_encryption_key_deletion_policy',
              'value': 'do_not_delete'}],
            [op for op in ops if op['path'] != '/name'],
        )


class TestBriefRules(ServerTestCase):
    """What the brief asks of every command, for backup server create."""

    def test_printed_command_uses_the_id_not_the_name(self):
        # the note tells the user what to run: a name is not shell-safe
        self.attach('/dev/vdb')
        srv = server(name='web; rm -rf ~')
        plan = self.prepare(srv)
        text = ' '.join(plan.notes)
        self.assertIn(f"'openstack server stop {srv.id}'", text)
        self.assertNotIn('stop web;', text)

    def test_dangling_symlink_at_manifest_is_refused(self):
        with tempfile.TemporaryDirectory() as d:
            link = os.path.join(d, 'm.json')
            os.symlink(os.path.join(d, 'nowhere'), link)
            err = self.assertRaises(
                errors.InvalidInput, self.prepare, server(), manifest=link
            )
        self.assertIn('never overwrites', str(err))

    def test_failed_manifest_names_what_is_kept(self):
        self.attach('/dev/vdb')
        with tempfile.TemporaryDirectory() as d, mock.patch.object(
            backup_set, 'write_atomic',
            side_effect=OSError(28, 'No space left on device'),
        ):
            err = self.assertRaises(
                errors.BackupError, self.run_backup, server(),
                manifest=os.path.join(d, 'm.json'),
            )
        text = str(err)
        self.assertIn('Writing the server manifest', text)
        self.assertIn('No space left on device', text)
        self.assertIn(f'root-disk -> image {self.root_image.id}', text)
        self.assertIn(f'volume /dev/vdb -> image {self.vol_image.id}', text)
        self.assertIn('kept (complete)', text)
        self.image_proxy.delete_image.assert_not_called()

    def test_interrupted_manifest_names_what_is_kept(self):
        with tempfile.TemporaryDirectory() as d, mock.patch.object(
            backup_set, 'write_atomic',
            side_effect=errors.Interrupted('SIGINT'),
        ):
            self.assertRaises(
                KeyboardInterrupt, self.run_backup, server(),
                manifest=os.path.join(d, 'm.json'),
            )
        self.assertIn(f'root-disk -> image {self.root_image.id}',
                      self.err.getvalue())

    def test_names_from_the_cloud_cannot_forge_output(self):
        evil = 'web\nERROR: forged line\x1b[2J'
        self.attach('/dev/vdb\n\x1b[31m')
        srv = server(name=evil, flavor=dict(FLAVOR, swap=512,
                                             original_name='f\nx'))
        plan = self.prepare(srv)
        for note in plan.notes:
            self.assertNotIn('\n', note)
            self.assertNotIn('\x1b', note)
        self.assertIn('web\\nERROR: forged line\\x1b[2J', ' '.join(plan.notes))
        err = self.assertRaises(
            errors.InvalidInput, self.prepare,
            server(name=evil, status='ERROR\n\x1b'),
        )
        self.assertEqual(1, len(str(err).splitlines()), str(err))
        self.assertNotIn('\x1b', str(err))
        self.run_backup(srv)
        self.assertNotIn('forged line\n', self.err.getvalue())
        self.assertNotIn('\x1b', self.err.getvalue())
