import hashlib
import io
import json
import os
import tempfile
import types
from unittest import mock

import fixtures
from openstack import exceptions as sdk_exc
from openstack.compute.v2 import flavor as _flavor
from openstack.compute.v2 import server as _server
from openstack.test import fakes as sdk_fakes

from osc_backup.common import backup_set
from osc_backup.common import errors
from osc_backup.common import tags
from osc_backup.common.progress import Reporter
from osc_backup.procedures import server_restore
from osc_backup.tests.unit import base
from osc_backup.tests.unit import fakes
from osc_backup.tests.unit.test_volume_backup import backup

RUN = 'aaaaaaaaaaaa'


def record(run=RUN, **extra):
    rec = {
        'osc_backup_tool': 'osc-backup',
        'osc_backup_run_id': run,
        'osc_backup_created_at': '2026-12-01T10:00:00+00:00',
        'osc_backup_server_id': 'srv-1',
        'osc_backup_server_name': 'web',
        'osc_backup_flavor': 'm1.tiny',
        'osc_backup_availability_zone': 'nova',
        'osc_backup_key_name': 'k',
        'osc_backup_server_metadata': '{"role": "web"}',
        'osc_backup_networks': '[]',
    }
    rec.update(extra)
    return rec


def root_image(run=RUN, **extra):
    return fakes.image(
        name='root', size=8 * 1024**2, properties=record(
            run,
            osc_backup_server_disk='root-disk',
            osc_backup_device='/dev/vda',
            osc_backup_boot_index='0',
            **extra,
        ),
    )


def volume_image(device, run=RUN, **extra):
    return fakes.image(name='vol' + device[-1], properties=record(
        run,
        osc_backup_server_disk='volume',
        osc_backup_device=device,
        osc_backup_volume_type='file',
        osc_backup_volume_size_gb='1',
        osc_backup_source_volume_id='src' + device[-1],
        **extra,
    ))


class ServerRestoreTestCase(base.TestCase):
    def setUp(self):
        super().setUp()
        self.bs, self.image_proxy = fakes.make_proxies()
        self.compute = fakes.make_compute_proxy()
        self.conn = mock.Mock(
            block_storage=self.bs, image=self.image_proxy,
            compute=self.compute,
        )
        self.err = io.StringIO()
        self.reporter = Reporter(stream=self.err, progress=False)
        self.run_ctx = tags.Run(run_id='0123456789ab')
        self.root = root_image()
        # recorded out of order: restored in device order
        self.vol_c = volume_image('/dev/vdc')
        self.vol_b = volume_image('/dev/vdb')
        self.images = [self.vol_c, self.root, self.vol_b]
        self.image_proxy.images.side_effect = lambda: iter(self.images)
        self.bs.backups.side_effect = lambda **kw: iter([])
        self.flavor = sdk_fakes.generate_fake_resource(
            _flavor.Flavor, name='m1.tiny'
        )
        self.compute.find_flavor.return_value = self.flavor
        self.compute.find_keypair.return_value = mock.Mock()
        self.compute.availability_zones.return_value = [
            types.SimpleNamespace(name='nova')
        ]
        self.bs.find_type.return_value = mock.Mock(id='t')
        # Nova takes a hostname at creation (compute API 2.90)
        self.takes_hostname = self.useFixture(fixtures.MockPatchObject(
            server_restore, '_takes_hostname', return_value=True)).mock

    def recorded(self):
        return server_restore.from_run(self.conn, RUN)

    def plan(self, **opts):
        return server_restore.prepare(
            self.conn, self.recorded(), server_restore.Options(**opts),
            self.run_ctx,
        )

    def assertNothingCreated(self):
        self.compute.create_server.assert_not_called()
        self.bs.create_volume.assert_not_called()
        self.image_proxy.post.assert_not_called()


class TestFindRun(ServerRestoreTestCase):
    def test_from_run(self):
        rec = self.recorded()
        self.assertEqual('run ' + RUN, rec.origin)
        self.assertEqual(('srv-1', 'web', 'm1.tiny', 'k', 'nova'), (
            rec.server_id, rec.server_name, rec.flavor, rec.key_name,
            rec.availability_zone))
        self.assertEqual({'role': 'web'}, rec.metadata)
        self.assertEqual([], rec.networks)
        self.assertFalse(rec.volume_backed)
        self.assertEqual(
            [self.root.id, self.vol_b.id, self.vol_c.id],
            [d.artifact_id for d in rec.disks],
        )
        self.assertEqual(['/dev/vdb', '/dev/vdc'],
                         [d.device for d in rec.data_disks])

    def test_other_runs_and_restores_are_not_part_of_it(self):
        self.images += [
            root_image(run='bbbbbbbbbbbb'),
            # an image a directory restore uploaded: not a backup
            root_image(osc_backup_restored_from='run:' + RUN),
            # another project's (public) image with the same record
            root_image(),
        ]
        self.conn.current_project_id = 'p1'
        for image in self.images:
            image.owner = 'p1'
        self.images[-1].owner = 'p2'
        rec = self.recorded()
        self.assertEqual(3, len(rec.disks))

    def test_unknown_run(self):
        e = self.assertRaises(
            errors.InvalidInput, server_restore.from_run, self.conn,
            'cccccccccccc',
        )
        self.assertIn('No server backup of run cccccccccccc', str(e))

    def test_not_a_run_id(self):
        e = self.assertRaises(
            errors.InvalidInput, server_restore.from_run, self.conn, 'x/y'
        )
        self.assertIn('neither a run ID', str(e))
        self.image_proxy.images.assert_not_called()

    def test_incomplete_run(self):
        self.vol_b.status = 'queued'
        e = self.assertRaises(errors.InvalidInput, self.recorded)
        self.assertIn('not complete', str(e))

    def test_no_boot_disk(self):
        self.images.remove(self.root)
        e = self.assertRaises(errors.InvalidInput, self.recorded)
        self.assertIn('exactly one boot disk', str(e))

    def test_volume_backed_with_backups(self):
        boot = backup(status='available', size=1, metadata=record(
            osc_backup_server_disk='volume', osc_backup_device='/dev/vda',
            osc_backup_boot_index='0', osc_backup_volume_type='file',
            osc_backup_bootable='true',
        ))
        self.images = []
        self.bs.backups.side_effect = lambda **kw: iter([boot])
        rec = self.recorded()
        self.assertTrue(rec.volume_backed)
        self.assertEqual(boot.id, rec.boot_disk.artifact_id)
        self.assertEqual('backup', rec.boot_disk.kind)
        self.assertTrue(rec.boot_disk.bootable)
        self.assertEqual([], rec.data_disks)

    def test_latest_picks_the_newest_complete_run(self):
        newer = 'dddddddddddd'
        newest = 'eeeeeeeeeeee'
        self.images += [
            root_image(run=newer,
                       osc_backup_created_at='2026-12-02T10:00:00+00:00'),
            # the newest run is incomplete (its image is still queued)
            root_image(run=newest,
                       osc_backup_created_at='2026-12-03T10:00:00+00:00'),
        ]
        self.images[-1].status = 'queued'
        rec = server_restore.latest_run(self.conn, 'web')
        self.assertEqual(newer, rec.run_id)
        rec = server_restore.latest_run(self.conn, 'srv-1')
        self.assertEqual(newer, rec.run_id)
        e = self.assertRaises(
            errors.InvalidInput, server_restore.latest_run, self.conn, 'db'
        )
        self.assertIn("No server backup of server 'db'", str(e))


class TestPrepare(ServerRestoreTestCase):
    def test_recorded_values(self):
        plan = self.plan()
        self.assertEqual('web', plan.name)
        self.assertIs(self.flavor, plan.flavor)
        self.assertEqual(('k', 'nova', 'none'), (
            plan.key_name, plan.availability_zone, plan.networks))
        self.assertEqual({
            'role': 'web',
            'osc_backup_tool': 'osc-backup',
            'osc_backup_run_id': self.run_ctx.run_id,
            'osc_backup_restored_from': 'run:' + RUN,
        }, plan.metadata)
        self.compute.find_flavor.assert_called_once_with(
            'm1.tiny', ignore_missing=True)

    def test_overrides(self):
        plan = self.plan(name='new', flavor='m1.small', no_key_name=True,
                         availability_zone='az2', nics='auto')
        self.assertEqual(('new', None, 'az2', 'auto'), (
            plan.name, plan.key_name, plan.availability_zone,
            plan.networks))
        self.compute.find_flavor.assert_called_once_with(
            'm1.small', ignore_missing=True)

    def test_missing_flavor_names_the_option(self):
        self.compute.find_flavor.return_value = None
        e = self.assertRaises(errors.InvalidInput, self.plan)
        self.assertIn("recorded flavor 'm1.tiny' does not exist", str(e))
        self.assertIn('--flavor', str(e))
        self.assertNothingCreated()

    def test_missing_volume_type_names_the_option(self):
        self.bs.find_type.return_value = None
        e = self.assertRaises(errors.InvalidInput, self.plan)
        self.assertIn('--volume-type file=<type>', str(e))
        self.assertNothingCreated()

    def test_volume_type_mapping(self):
        plan = self.plan(volume_types={'file': 'fast'})
        self.bs.find_type.assert_called_once_with('fast', ignore_missing=True)
        self.assertEqual(['fast', 'fast'],
                         [d.target_type for d in plan.recorded.data_disks])
        e = self.assertRaises(errors.InvalidInput, self.plan,
                              volume_types={'luks': 'x'})
        self.assertIn("no restored volume has type 'luks'", str(e))

    def test_missing_key_pair_and_zone(self):
        self.compute.find_keypair.return_value = None
        e = self.assertRaises(errors.InvalidInput, self.plan)
        self.assertIn('--key-name', str(e))
        self.compute.find_keypair.return_value = mock.Mock()
        self.compute.availability_zones.return_value = []
        e = self.assertRaises(errors.InvalidInput, self.plan)
        self.assertIn('--availability-zone', str(e))
        self.assertNothingCreated()

    def test_nics(self):
        self.assertIsNone(server_restore.nics_option([], []))
        self.assertEqual('none', server_restore.nics_option(['none'], []))
        self.assertEqual(
            [{'uuid': 'n1', 'fixed_ip': '10.0.0.5'}, {'port': 'p'},
             {'uuid': 'n2'}],
            server_restore.nics_option(
                ['net-id=n1,v4-fixed-ip=10.0.0.5', 'port-id=p'], ['n2']),
        )
        for bad in (['none', 'auto'], ['bogus=1'], ['v4-fixed-ip=1.2.3.4'],
                    ['net-id=a,port-id=b'], ['net-id=a,v4-fixed-ip=1.2.3'],
                    ['net-id=a,v6-fixed-ip=10.0.0.1']):
            self.assertRaises(errors.InvalidInput,
                              server_restore.nics_option, bad, [])
        self.assertRaises(errors.InvalidInput,
                          server_restore.nics_option, ['none'], ['n'])

    def test_given_networks_and_ports_checked_before_anything(self):
        network = self.conn.network
        nets = {'private': mock.Mock(id='net-1')}
        ports = {'free': mock.Mock(id='port-1', device_id=''),
                 'used': mock.Mock(id='port-2', device_id='srv-9')}

        def finder(found):
            def find(name, ignore_missing):
                if name not in found:
                    raise sdk_exc.NotFoundException()
                return found[name]
            return find

        network.find_network.side_effect = finder(nets)
        network.find_port.side_effect = finder(ports)
        plan = self.plan(nics=[{'uuid': 'private', 'fixed_ip': '10.0.0.5'},
                               {'port': 'free'}])
        # by ID, as Nova takes them
        self.assertEqual([{'uuid': 'net-1', 'fixed_ip': '10.0.0.5'},
                          {'port': 'port-1'}], plan.networks)
        for nics, said in (
            ([{'uuid': 'nowhere'}],
             "No network with name or ID 'nowhere' found (--network"),
            ([{'port': 'gone'}],
             "No port with name or ID 'gone' found (--nic port-id=)"),
            ([{'port': 'used'}], 'is in use by srv-9'),
        ):
            e = self.assertRaises(errors.InvalidInput, self.plan, nics=nics)
            self.assertIn(said, str(e))
        network.find_network.side_effect = sdk_exc.DuplicateResource()
        e = self.assertRaises(errors.InvalidInput, self.plan,
                              nics=[{'uuid': 'twice'}])
        self.assertIn("named 'twice' (--network, --nic net-id=): use its ID",
                      str(e))
        self.assertNothingCreated()

    def test_steps(self):
        steps = server_restore.plan_steps(self.plan())
        self.assertIn(f'create server web from image {self.root.id}',
                      steps[2])
        self.assertEqual(['attach the volume of disk /dev/vdb',
                          'attach the volume of disk /dev/vdc'], steps[3:5])
        self.assertIn('last, the server their final names', steps[5])

    def test_hostname_from_the_final_name(self):
        self.assertEqual('web', self.plan().hostname)
        self.assertEqual('my-db-1', self.plan(name='My_DB.1 ').hostname)
        self.assertEqual('n-x', server_restore.hostname_of('n\u00e9-x!'))
        self.assertIsNone(server_restore.hostname_of('\u00e9'))
        self.assertEqual(63, len(server_restore.hostname_of('a' * 80)))
        # an older Nova derives it from the temporary name: said
        self.takes_hostname.return_value = False
        plan = self.plan()
        self.assertIsNone(plan.hostname)
        self.assertIn('hostname derived from that name', plan.notes[-1])


class TestRestore(ServerRestoreTestCase):
    def setUp(self):
        super().setUp()
        self.server = sdk_fakes.generate_fake_resource(
            _server.Server, name='web', status='BUILD')
        self.compute.create_server.return_value = self.server
        self.compute.get_server.return_value = self.server
        self.compute.wait_for_status.side_effect = self._wait
        self.bs.get_volume.side_effect = lambda vid: fakes.volume(id=vid)
        self.bs.wait_for_status.side_effect = self._wait
        patcher = mock.patch.object(
            server_restore.volume_restore, 'restore',
            side_effect=self._restore_volume,
        )
        self.volume_restore = patcher.start()
        self.addCleanup(patcher.stop)
        patcher = mock.patch.object(server_restore.volumes, 'delete_volume')
        self.delete_volume = patcher.start()
        self.addCleanup(patcher.stop)
        self.restored = []
        self.compute.update_server.side_effect = self._rename

    def _wait(self, res, status, **kwargs):
        res.status = status
        return res

    def _rename(self, server, name):
        server.name = name
        return server

    def _restore_volume(self, conn, source, opts, *, run, reporter):
        volume_id = f'new-{len(self.restored)}'
        self.restored.append((source.resource.id, opts, volume_id))
        return {'volume_id': volume_id, 'size': 1, 'volume_type': 'file',
                'bootable': False, 'final_name': opts.name,
                'metadata': {'osc_backup_run_id': run.run_id}}

    def test_image_booted(self):
        result = server_restore.restore_server(
            self.conn, self.plan(), run=self.run_ctx, reporter=self.reporter
        )
        self.assertEqual(
            [self.vol_b.id, self.vol_c.id], [r[0] for r in self.restored])
        self.assertEqual(['web-vdb', 'web-vdc'],
                         [r[1].name for r in self.restored])
        # the volumes keep their temporary names until the server is done
        self.assertEqual([False, False],
                         [r[1].rename for r in self.restored])
        kwargs = self.compute.create_server.call_args.kwargs
        # created under the run's temporary name, with the tool's mark
        self.assertEqual('osc-backup-tmp-0123456789ab-restore-of-web',
                         kwargs['name'])
        self.assertEqual('web', kwargs['hostname'])
        self.assertEqual(('osc-backup', '0123456789ab'), (
            kwargs['metadata']['osc_backup_tool'],
            kwargs['metadata']['osc_backup_run_id']))
        self.assertEqual('web', result['server_name'])
        self.assertEqual(['web-vdb', 'web-vdc'],
                         [v['name'] for v in result['volumes']])
        self.assertEqual(self.root.id, kwargs['image_id'])
        self.assertEqual(self.flavor.id, kwargs['flavor_id'])
        self.assertEqual('none', kwargs['networks'])
        self.assertEqual('k', kwargs['key_name'])
        self.assertEqual('run:' + RUN,
                         kwargs['metadata']['osc_backup_restored_from'])
        self.assertNotIn('block_device_mapping', kwargs)
        # attached in device order, after the server is ACTIVE
        self.assertEqual(
            [mock.call(self.server, 'new-0'),
             mock.call(self.server, 'new-1')],
            self.compute.create_volume_attachment.call_args_list)
        self.assertEqual('ACTIVE', result['server_status'])
        self.assertEqual(['/dev/vdb', '/dev/vdc'],
                         [v['device'] for v in result['volumes']])
        self.assertEqual(self.root.id, result['image_id'])
        self.assertEqual(2 * 1024**3 + self.root.size, result['bytes'])
        self.assertEqual([], result['uploaded'])
        # success: nothing of it is removed
        self.delete_volume.assert_not_called()
        self.compute.delete_server.assert_not_called()

    def test_volume_booted_boots_from_the_restored_volume(self):
        boot = backup(status='available', size=1, metadata=record(
            osc_backup_server_disk='volume', osc_backup_device='/dev/vda',
            osc_backup_boot_index='0', osc_backup_volume_type='file',
            osc_backup_bootable='true',
        ))
        self.images = [self.vol_b]
        self.bs.backups.side_effect = lambda **kw: iter([boot])
        server_restore.restore_server(
            self.conn, self.plan(), run=self.run_ctx, reporter=self.reporter
        )
        kwargs = self.compute.create_server.call_args.kwargs
        self.assertNotIn('image_id', kwargs)
        self.assertEqual([{
            'boot_index': 0, 'uuid': 'new-0', 'source_type': 'volume',
            'destination_type': 'volume', 'delete_on_termination': False,
        }], kwargs['block_device_mapping'])
        # the restore said it is not bootable: made bootable
        self.bs.set_volume_bootable_status.assert_called_once_with(
            'new-0', True)
        self.assertEqual(
            [mock.call(self.server, 'new-1')],
            self.compute.create_volume_attachment.call_args_list)

    def test_final_names_volumes_first_the_server_last(self):
        order = mock.Mock()
        order.attach.side_effect = self.compute.create_volume_attachment
        self.compute.create_volume_attachment = order.attach
        self.compute.update_server.side_effect = None
        self.compute.update_server.return_value = self.server
        order.attach_mock(self.compute.update_server, 'server')
        with mock.patch.object(server_restore.volume_restore,
                               'finish_new_volume') as finish:
            order.attach_mock(finish, 'volume')
            server_restore.restore_server(
                self.conn, self.plan(), run=self.run_ctx,
                reporter=self.reporter)
        self.assertEqual([
            mock.call.attach(self.server, 'new-0'),
            mock.call.attach(self.server, 'new-1'),
            mock.call.volume(self.bs, 'new-0', 'web-vdb',
                             {'osc_backup_run_id': '0123456789ab'}),
            mock.call.volume(self.bs, 'new-1', 'web-vdc',
                             {'osc_backup_run_id': '0123456789ab'}),
            mock.call.server(self.server, name='web'),
        ], order.mock_calls)

    def test_failed_rename_removes_what_was_created(self):
        self.compute.update_server.side_effect = RuntimeError('refused')
        self.assertRaises(
            RuntimeError, server_restore.restore_server, self.conn,
            self.plan(), run=self.run_ctx, reporter=self.reporter)
        self.compute.delete_server.assert_called_once_with(
            self.server, ignore_missing=True)
        self.assertEqual(
            ['new-1', 'new-0'],
            [c.args[1] for c in self.delete_volume.call_args_list])

    def test_server_error_removes_what_was_created(self):
        def fail(res, status, **kwargs):
            from openstack import exceptions as sdk_exc
            raise sdk_exc.ResourceFailure('ERROR')

        self.compute.wait_for_status.side_effect = fail
        self.server.fault = {'message': 'No valid host was found.'}
        e = self.assertRaises(
            errors.WaitError, server_restore.restore_server, self.conn,
            self.plan(), run=self.run_ctx, reporter=self.reporter,
        )
        self.assertIn('No valid host was found', str(e))
        self.compute.delete_server.assert_called_once_with(
            self.server, ignore_missing=True)
        self.assertEqual(
            ['new-1', 'new-0'],
            [c.args[1] for c in self.delete_volume.call_args_list])

    def test_cleanup_failure_names_the_leftovers(self):
        self.compute.create_volume_attachment.side_effect = RuntimeError(
            'attach failed')
        self.delete_volume.side_effect = [None, RuntimeError('stuck')]
        e = self.assertRaises(
            errors.CleanupError, server_restore.restore_server, self.conn,
            self.plan(), run=self.run_ctx, reporter=self.reporter,
        )
        self.assertIn('attach failed', str(e))
        self.assertIn('openstack volume delete new-0', str(e))


def manifest_doc(**disk):
    entry = {
        'role': 'root-disk', 'device': '/dev/vda', 'boot_index': 0,
        'artifact': {'method': 'server-image', 'image_id': 'i',
                     'files': ['root.raw']},
    }
    entry.update(disk)
    return {
        'format': 'osc-backup-server', 'format_version': 1,
        'tool': 'osc-backup', 'run_id': RUN,
        'created_at': '2026-12-01T10:00:00+00:00',
        'consistency': 'offline',
        'server': {'id': 's', 'name': 'web', 'flavor': {},
                   'volume_backed': False},
        'disks': [entry],
    }


class TestDirectory(base.TestCase):
    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__('shutil').rmtree(self.dir))

    def write(self, name, data):
        with open(os.path.join(self.dir, name), 'w') as f:
            json.dump(data, f)

    def manifest(self, **disk):
        return manifest_doc(**disk)

    def test_no_manifest(self):
        e = self.assertRaises(errors.InvalidInput,
                              server_restore.from_directory, self.dir)
        self.assertIn('holds no server manifest', str(e))

    def test_invalid_manifest(self):
        self.write('x.server.json', {'format': 'other'})
        e = self.assertRaises(errors.InvalidInput,
                              server_restore.from_directory, self.dir)
        self.assertIn('not a valid server manifest', str(e))

    def test_set_leading_out_of_the_directory(self):
        self.write('x.server.json', self.manifest(artifact={
            'method': 'server-image', 'image_id': 'i',
            'files': ['../etc/passwd']}))
        e = self.assertRaises(errors.InvalidInput,
                              server_restore.from_directory, self.dir)
        self.assertIn('not a plain name', str(e))

    def test_missing_set(self):
        self.write('x.server.json', self.manifest())
        e = self.assertRaises(errors.InvalidInput,
                              server_restore.from_directory, self.dir)
        self.assertIn('root.raw', str(e))

    def test_manifest_without_download_names_cloud_artifacts(self):
        doc = self.manifest(artifact={'method': 'server-image',
                                      'image_id': 'img-1', 'files': []})
        doc['disks'].append({
            'role': 'volume', 'device': '/dev/vdb', 'boot_index': None,
            'volume': {'id': 'v', 'size_gb': 1, 'bootable': False,
                       'encrypted': False},
            'artifact': {'method': 'backup', 'backup_id': 'b-1'},
        })
        self.write('web.server.json', doc)
        rec = server_restore.from_directory(
            os.path.join(self.dir, 'web.server.json'))
        self.assertEqual([('image', 'img-1', None), ('backup', 'b-1', None)],
                         [(d.kind, d.artifact_id, d.set_path)
                          for d in rec.disks])

    def test_neither_run_nor_directory(self):
        e = self.assertRaises(errors.InvalidInput,
                              server_restore.find_manifest,
                              os.path.join(self.dir, 'nothing'))
        self.assertIn('neither a run ID', str(e))


def write_set(directory, name, data):
    """A valid backup set (data, manifest, checksum file) in
    ``directory``; returns the file names."""
    path = os.path.join(directory, name)
    with open(path, 'wb') as f:
        f.write(data)
    digest = hashlib.sha512(data).hexdigest()
    manifest = backup_set.build_manifest(
        mock.Mock(), {'id': 'img-' + name}, data_file=name, size=len(data),
        hash_algo='sha512', hash_value=digest, verified=True, started=0.0,
        finished=1.0)
    manifest['source'] = {}
    raw = backup_set.manifest_bytes(manifest)
    mpath = backup_set.manifest_path(path)
    with open(mpath, 'wb') as f:
        f.write(raw)
    with open(os.path.join(directory, manifest['data']['checksum_file']),
              'w') as f:
        f.write(backup_set.checksum_line(digest, name))
        f.write(backup_set.checksum_line(
            hashlib.sha512(raw).hexdigest(), os.path.basename(mpath)))
    return [name, os.path.basename(mpath),
            manifest['data']['checksum_file']]


class TestRestoreFromDirectory(ServerRestoreTestCase):
    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        manifest = manifest_doc()
        manifest['server'].update(
            flavor={'original_name': 'm1.tiny'}, key_name=None,
            availability_zone=None, metadata={'a': 'b'}, networks={})
        manifest['disks'][0]['artifact']['files'] = write_set(
            self.dir, 'root.raw', b'r' * 1000)
        manifest['disks'].append({
            'role': 'volume', 'device': '/dev/vdb', 'boot_index': None,
            'volume': {'id': 'v1', 'name': 'data', 'size_gb': 1,
                       'volume_type': 'luks', 'bootable': False,
                       'encrypted': True},
            'artifact': {'method': 'image', 'image_id': 'i2',
                         'files': write_set(self.dir, 'vol.raw',
                                            b'v' * 500)},
        })
        with open(os.path.join(self.dir, 'web.server.json'), 'w') as f:
            json.dump(manifest, f)
        self.uploaded = []
        patcher = mock.patch.object(
            server_restore.image_restore, 'restore_image',
            side_effect=self._upload)
        self.restore_image = patcher.start()
        self.addCleanup(patcher.stop)
        self.image_proxy.get_image.side_effect = (
            lambda i: fakes.image(id=i, size=1000))
        for name in ('volume_restore', 'volumes'):
            patcher = mock.patch.object(getattr(server_restore, name), (
                'restore' if name == 'volume_restore' else 'delete_volume'),
                return_value={'volume_id': 'nv', 'size': 1,
                              'volume_type': 'luks', 'bootable': False,
                              'final_name': 'web-vdb', 'metadata': {}})
            patcher.start()
            self.addCleanup(patcher.stop)
        self.server = sdk_fakes.generate_fake_resource(
            _server.Server, name='web', status='ACTIVE')
        self.compute.create_server.return_value = self.server
        self.compute.wait_for_status.side_effect = lambda res, **kw: res
        self.bs.get_volume.side_effect = lambda vid: fakes.volume(id=vid)
        self.bs.wait_for_status.side_effect = lambda res, **kw: res

    def _upload(self, conn, checked, **kwargs):
        path = checked.backup_set.manifest_path
        self.uploaded.append((os.path.basename(path), kwargs))
        image_id = f'up-{len(self.uploaded)}'
        key = 'new-key' if 'vol' in path else None
        return mock.Mock(image_id=image_id, size=1000,
                         encryption_key_id=key, final_name='web-root',
                         protect=False)

    def test_validated_uploaded_and_restored(self):
        rec = server_restore.from_directory(self.dir)
        self.assertEqual('directory ' + self.dir, rec.origin)
        self.assertEqual(('m1.tiny', {'a': 'b'}, []),
                         (rec.flavor, rec.metadata, rec.networks))
        plan = server_restore.prepare(
            self.conn, rec, server_restore.Options(volume_types={
                'luks': 'enc'}), self.run_ctx)
        self.assertEqual('none', plan.networks)
        self.restore_image.assert_not_called()  # nothing made yet
        result = server_restore.restore_server(
            self.conn, plan, run=self.run_ctx, reporter=self.reporter)
        self.assertEqual(
            ['root.raw.manifest.json', 'vol.raw.manifest.json'],
            [u[0] for u in self.uploaded])
        props = self.uploaded[0][1]['properties']
        self.assertEqual({
            'osc_backup_run_id': self.run_ctx.run_id,
            'osc_backup_restored_from': 'run:' + RUN,
        }, props)
        self.assertEqual('up-1', self.compute.create_server.call_args
                         .kwargs['image_id'])
        # uploaded under temporary names; the root image gets its final
        # name once the server is done, the volume's image never needs one
        self.assertEqual([False, False],
                         [u[1]['rename'] for u in self.uploaded])
        self.image_proxy.update_image.assert_called_once_with(
            'up-1', name='web-root')
        self.assertEqual([True, False],
                         [u['kept'] for u in result['uploaded']])
        self.assertEqual(2000, result['bytes'])
        # the volume's image (and the key stored for it) are gone, the
        # root image stays
        self.image_proxy.delete_image.assert_called_once_with(
            'up-2', ignore_missing=True)
        self.conn.key_manager.delete_secret.assert_called_once_with(
            'new-key', ignore_missing=True)

    def test_every_set_hashed_before_the_first_upload(self):
        rec = server_restore.from_directory(self.dir)
        # the second set's data changed, its size and files as recorded:
        # only hashing the data finds it
        with open(os.path.join(self.dir, 'vol.raw'), 'r+b') as f:
            f.write(b'x')
        e = self.assertRaises(
            errors.InvalidInput, server_restore.prepare, self.conn, rec,
            server_restore.Options(volume_types={'luks': 'enc'}),
            self.run_ctx, reporter=self.reporter)
        self.assertIn("vol.raw' does not match its backup set", str(e))
        self.restore_image.assert_not_called()
        self.assertNothingCreated()

    def test_damaged_set_refused_before_anything(self):
        with open(os.path.join(self.dir, 'vol.raw.sha512'), 'w') as f:
            f.write(backup_set.checksum_line('0' * 128, 'vol.raw'))
        e = self.assertRaises(errors.InvalidInput,
                              server_restore.from_directory, self.dir)
        self.assertIn('damaged', str(e))
        self.restore_image.assert_not_called()
