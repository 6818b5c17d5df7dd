"""backup server create: every disk captured together (issue 13)."""

import json
from unittest import mock

from openstack import exceptions as sdk_exc
from openstack.block_storage.v3 import backup as _backup
from openstack.test import fakes as sdk_fakes

from osc_backup.common import cleanup as cleanup_mod
from osc_backup.common import errors
from osc_backup.common import volumes
from osc_backup.common import waits
from osc_backup.procedures import leftovers
from osc_backup.procedures import server_capture
from osc_backup.tests.unit import base
from osc_backup.tests.unit import fakes
from osc_backup.tests.unit.test_server_backup import ServerTestCase
from osc_backup.tests.unit.test_server_backup import server

AGENT = {'hw_qemu_guest_agent': 'yes', 'os_require_quiesce': 'yes'}


class CaptureTestCase(ServerTestCase):
    def setUp(self):
        super().setUp()
        # Nova's view of the server: pause/unpause change it
        self.state = {'status': 'ACTIVE', 'task_state': None}
        self.calls = []  # the order of the calls that matter
        self.compute.get_server.side_effect = self._get_server
        self.compute.pause_server.side_effect = self._pause
        self.unpause_refusals = 0
        self.compute.unpause_server.side_effect = self._unpause
        self.compute.wait_for_status.side_effect = self._compute_wait
        self.create_image.side_effect = self._create_image
        self.posted = self.bs.post.side_effect
        self.bs.post.side_effect = self._post
        self.bs.delete_snapshot.side_effect = (
            lambda snap, **kw: self.calls.append(('delete_snapshot', snap.id))
        )
        self.bs.snapshots.return_value = []

    def _get_server(self, server_id):
        return server(id=server_id, **self.state)

    def _pause(self, server_id):
        self.calls.append(('pause', server_id))
        self.state['status'] = 'PAUSED'

    def _unpause(self, server_id):
        self.calls.append(('unpause', server_id))
        if self.unpause_refusals:
            self.unpause_refusals -= 1
            raise sdk_exc.ConflictException('task_state image_uploading')
        self.state['status'] = 'ACTIVE'

    def _compute_wait(self, res, status, **kwargs):
        res.status = status
        return res

    def _create_image(self, session, name, metadata=None):
        self.calls.append(('createImage', name))
        return self.create_image.return_value

    def _post(self, url, json=None, **kwargs):
        self.calls.append(('snapshot', json['snapshot']['volume_id']))
        return self.posted(url, json=json, **kwargs)


class TestVolumeBooted(CaptureTestCase):
    def test_volumes_from_novas_snapshots(self):
        root = self.attach('/dev/vda', is_bootable=True, name='boot')
        data = self.attach('/dev/vdb', name='data')
        nova_image = self.nova_makes_snapshots(root, data)
        by_volume = {s.volume_id: s.id for s in self.snaps.values()}

        result = self.run_backup(server(image={}))

        # one createImage, named with the run's temporary name
        self.assertEqual(
            [('createImage', 'osc-backup-tmp-0123456789ab-nova-of-web')],
            [c for c in self.calls if c[0] == 'createImage'],
        )
        # no snapshot of our own: Nova's are used
        self.bs.post.assert_not_called()
        self.assertEqual('one-call', result['mode'])
        self.assertEqual('crash-consistent', result['consistency'])
        self.assertEqual(
            [(root.id, by_volume[root.id]), (data.id, by_volume[data.id])],
            [(a['volume_id'], a['snapshot_id'])
             for a in result['artifacts']],
        )
        self.assertEqual(
            ['2026-12-03T07:00:00.500000', '2026-12-03T07:00:01.500000'],
            [a['snapshot_created_at'] for a in result['artifacts']],
        )
        self.assertEqual(1.0, result['skew'])
        # each temporary volume was made from Nova's snapshot
        self.assertEqual(
            sorted(by_volume.values()),
            sorted(c.kwargs['snapshot_id']
                   for c in self.bs.create_volume.call_args_list),
        )
        # Nova's image deleted; its snapshots too
        self.image_proxy.delete_image.assert_any_call(
            nova_image.id, ignore_missing=True
        )
        deleted = {c[1] for c in self.calls if c[0] == 'delete_snapshot'}
        self.assertEqual(set(by_volume.values()), deleted)

    def test_backup_path_backs_up_the_snapshot(self):
        root = self.attach('/dev/vda', is_bootable=True)
        self.nova_makes_snapshots(root)
        snap_id, = self.snaps
        backup = sdk_fakes.generate_fake_resource(
            _backup.Backup, status='creating', availability_zone='nova',
            is_incremental=False, volume_id=root.id,
        )
        self.bs.create_backup.return_value = backup

        result = self.run_backup(server(image={}), method='backup')

        attrs = self.bs.create_backup.call_args.kwargs
        self.assertEqual(snap_id, attrs['snapshot_id'])
        self.assertEqual(root.id, attrs['volume_id'])
        self.assertNotIn('force', attrs)
        [artifact] = result['artifacts']
        self.assertEqual(('backup', backup.id, snap_id),
                         (artifact['artifact'], artifact['id'],
                          artifact['snapshot_id']))
        self.assertIn(('delete_snapshot', snap_id), self.calls)

    def test_refused_create_image_removes_what_nova_made(self):
        self.attach('/dev/vda')
        name = 'snapshot for osc-backup-tmp-0123456789ab-nova-of-web'
        half = self.make_snapshot('v', name=name, status='available')
        other = self.make_snapshot('v', name=name + 'x', status='available')
        self.bs.snapshots.return_value = [half, other]
        self.create_image.side_effect = sdk_exc.HttpException('quota')
        err = self.assertRaises(errors.BackupError, self.run_backup,
                                server(image={}))
        self.assertIn('Nova refused to snapshot server', str(err))
        self.bs.snapshots.assert_called_with(details=True, name=name)
        self.assertEqual([('delete_snapshot', half.id)],
                         [c for c in self.calls if c[0] == 'delete_snapshot'])


class TestQuiesce(CaptureTestCase):
    def test_refused_without_the_agent_before_anything(self):
        self.attach('/dev/vda', volume_image_metadata={
            'os_require_quiesce': 'yes'})
        for srv, text in (
            (server(image={}), 'hw_qemu_guest_agent=yes'),
            (server(), 'boots from an image'),
            (server(image={}, status='SHUTOFF'), 'only the guest of an'),
        ):
            err = self.assertRaises(errors.InvalidInput, self.prepare, srv,
                                    quiesce=True)
            self.assertIn('--quiesce', str(err))
            self.assertIn(text, str(err))
            self.assertEqual(1, len(str(err).splitlines()))
        self.assertEqual([], self.calls)

    def test_app_consistent_when_nova_requires_the_freeze(self):
        root = self.attach('/dev/vda', volume_image_metadata=AGENT)
        nova_image = self.nova_makes_snapshots(root)
        nova_image.properties.update(AGENT)

        result = self.run_backup(server(image={}), quiesce=True)

        self.assertEqual(('quiesced', 'app-consistent'),
                         (result['mode'], result['consistency']))
        self.assertEqual(['app-consistent'],
                         [a['consistency'] for a in result['artifacts']])
        self.assertEqual('app-consistent',
                         self.volume_record()['osc_backup_consistency'])

    def test_nova_not_requiring_the_freeze_keeps_nothing(self):
        # the properties were set on the volume after the server existed:
        # Nova's own record of the server (copied into its image) lacks them
        root = self.attach('/dev/vda', volume_image_metadata=AGENT)
        nova_image = self.nova_makes_snapshots(root)
        snap_id, = self.snaps

        err = self.assertRaises(errors.BackupError, self.run_backup,
                                server(image={}), quiesce=True)

        self.assertIn('did not require the freeze', str(err))
        self.image_proxy.delete_image.assert_any_call(
            nova_image.id, ignore_missing=True)
        self.assertIn(('delete_snapshot', snap_id), self.calls)
        self.bs.upload_volume_to_image.assert_not_called()


class TestPause(CaptureTestCase):
    def test_refused_unless_active_or_with_quiesce(self):
        self.attach('/dev/vdb')
        for srv, opts, text in (
            (server(status='SHUTOFF'), {'pause': True}, "is 'SHUTOFF'"),
            (server(), {'pause': True, 'quiesce': True},
             'cannot be combined'),
        ):
            err = self.assertRaises(errors.InvalidInput, self.prepare, srv,
                                    **opts)
            self.assertIn(text, str(err))
        self.assertEqual([], self.calls)

    def test_image_booted_one_point(self):
        a = self.attach('/dev/vdb', name='a')
        b = self.attach('/dev/vdc', name='b')
        self.unpause_refusals = 2  # Nova's snapshot task still runs
        srv = server()

        result = self.run_backup(srv, pause=True)

        order = [c[0] for c in self.calls
                 if c[0] in ('pause', 'snapshot', 'createImage', 'unpause')]
        self.assertEqual(
            ['pause', 'snapshot', 'snapshot', 'createImage', 'unpause',
             'unpause', 'unpause'], order)
        self.assertEqual(
            {a.id, b.id}, {c[1] for c in self.calls if c[0] == 'snapshot'})
        self.assertEqual('ACTIVE', self.state['status'])
        self.assertEqual(('paused', 'crash-consistent'),
                         (result['mode'], result['consistency']))
        # the requests ran at once: in any order
        self.assertEqual(
            ['2026-12-03T07:00:00.500000', '2026-12-03T07:00:01.500000'],
            sorted(a['snapshot_created_at'] for a in result['artifacts']
                   if a['disk'] == 'volume'))
        self.assertIsNotNone(result['skew'])
        # the snapshots of the capture are gone
        self.assertEqual(
            set(self.snaps),
            {c[1] for c in self.calls if c[0] == 'delete_snapshot'})

    def test_failure_unpauses_before_deleting_the_snapshots(self):
        self.attach('/dev/vdb')
        self.image_proxy.wait_for_status.side_effect = (
            sdk_exc.ResourceFailure('killed')
        )
        self.compute.get_server.side_effect = self._get_server
        self.create_image.side_effect = self._root_fails
        self.assertRaises(errors.BackupError, self.run_backup, server(),
                          pause=True)
        kinds = [c[0] for c in self.calls]
        self.assertEqual('ACTIVE', self.state['status'])
        self.assertLess(kinds.index('unpause'),
                        kinds.index('delete_snapshot'))

    def _root_fails(self, session, name, metadata=None):
        self.calls.append(('createImage', name))
        raise sdk_exc.HttpException('Nova is down')

    def test_volume_booted_paused_around_novas_call(self):
        root = self.attach('/dev/vda')
        self.nova_makes_snapshots(root)
        result = self.run_backup(server(image={}), pause=True)
        self.assertEqual(
            ['pause', 'createImage', 'unpause'],
            [c[0] for c in self.calls
             if c[0] in ('pause', 'createImage', 'unpause')])
        self.assertEqual('paused', result['mode'])
        self.assertEqual('ACTIVE', self.state['status'])

    def test_keep_temporary_still_unpauses(self):
        self.attach('/dev/vdb')
        self.bs.upload_volume_to_image.side_effect = sdk_exc.HttpException(
            'quota')
        self.assertRaises(errors.BackupError, self.run_backup, server(),
                          pause=True, keep_temporary=True)
        self.assertEqual('ACTIVE', self.state['status'])
        self.assertNotIn('delete_snapshot', [c[0] for c in self.calls])
        self.assertIn('openstack volume snapshot delete', self.err.getvalue())

    def test_interrupt_unpauses(self):
        self.attach('/dev/vdb')
        self.bs.upload_volume_to_image.side_effect = errors.Interrupted(
            'SIGINT')
        self.assertRaises(KeyboardInterrupt, self.run_backup, server(),
                          pause=True)
        self.assertEqual('ACTIVE', self.state['status'])
        self.assertIn('delete_snapshot', [c[0] for c in self.calls])


class TestConcurrent(CaptureTestCase):
    def test_snapshots_requested_before_the_root(self):
        self.attach('/dev/vdb', name='a')
        self.attach('/dev/vdc', name='b')
        result = self.run_backup(server())
        kinds = [c[0] for c in self.calls
                 if c[0] in ('snapshot', 'createImage')]
        self.assertEqual(['snapshot', 'snapshot', 'createImage'], kinds)
        self.compute.pause_server.assert_not_called()
        self.assertEqual('concurrent', result['mode'])
        self.assertIn('not at one moment', ' '.join(result['notes']))
        self.assertIn('--pause', ' '.join(result['notes']))

    def test_one_failed_request_keeps_nothing(self):
        a = fakes.volume(status='in-use', name='a')
        b = fakes.volume(status='in-use', name='b')
        made = fakes.snapshot(volume_id=a.id)

        def create(bs, attrs, status):
            if attrs['volume_id'] == b.id:
                raise sdk_exc.HttpException('over quota')
            return made

        reporter = mock.Mock()
        cleanup = cleanup_mod.Cleanup(reporter)
        with mock.patch('osc_backup.common.microversion.create_snapshot',
                        side_effect=create), \
                mock.patch('osc_backup.common.volumes.delete_snapshot') \
                as delete:
            def run():
                with cleanup.guard():
                    volumes.request_temporary_snapshots(
                        self.bs, [a, b], run=self.run_ctx,
                        cleanup=cleanup, interval=0)
            err = self.assertRaises(sdk_exc.HttpException, run)
        self.assertIn('over quota', str(err))
        delete.assert_called_once_with(
            self.bs, made.id, step='delete temporary snapshot', interval=0)


class TestHelpers(base.TestCase):
    def test_skew(self):
        self.assertEqual(2.5, server_capture.skew([
            '2026-12-03T07:00:01Z', '2026-12-03T07:00:03.500000', None,
            '2026-12-03T07:00:02.000000',
        ]))
        self.assertIsNone(server_capture.skew([None, 'garbage']))
        self.assertEqual(0.0, server_capture.skew(['2026-12-03T07:00:01Z']))

    def test_wait_until(self):
        seen = iter([1, 2, 3])
        self.assertEqual(3, waits.wait_until(
            lambda: next(seen), lambda n: n == 3, what='three',
            step='count', timeout=10, interval=0))

    def test_wait_until_times_out(self):
        err = self.assertRaises(
            errors.WaitTimeout, waits.wait_until, lambda: 1,
            lambda n: False, what='never', step='count', timeout=0.3,
            interval=0.05)
        self.assertIn('never', str(err))

    def test_block_device_mapping(self):
        image = fakes.image(properties={'block_device_mapping': json.dumps(
            [{'snapshot_id': 's1'}, 'junk', {'volume_id': 'v'}])})
        self.assertEqual(
            [{'snapshot_id': 's1'}, {'volume_id': 'v'}],
            server_capture._block_device_mapping(image))
        self.assertEqual([], server_capture._block_device_mapping(
            fakes.image(properties={'block_device_mapping': '{'})))

    def test_cleanup_move_up_and_drop(self):
        ran = []
        cleanup = cleanup_mod.Cleanup(mock.Mock())
        first = cleanup.add('a', lambda: ran.append('a'), leftover='a',
                            remove_command='x')
        cleanup.add('b', lambda: ran.append('b'), leftover='b',
                    remove_command='x')
        gone = cleanup.add('c', lambda: ran.append('c'), leftover='c',
                           remove_command='x')
        cleanup.move_up(first)
        cleanup.drop(gone)
        cleanup.run(failed=True)
        self.assertEqual(['a', 'b'], ran)


class TestLeftovers(base.TestCase):
    def test_novas_snapshots_are_found(self):
        bs = mock.Mock()
        nova = fakes.snapshot(
            name='snapshot for osc-backup-tmp-0123456789ab-nova-of-web',
            metadata={})
        alien = fakes.snapshot(name='snapshot for my-own-image', metadata={})
        vol = fakes.volume(
            name='snapshot for osc-backup-tmp-0123456789ab-nova-of-web')
        bs.volumes.return_value = [vol]
        bs.snapshots.return_value = [nova, alien]
        conn = mock.Mock(block_storage=bs)
        found = list(leftovers._block_storage(conn, None))
        self.assertEqual([('snapshot', nova.id, '0123456789ab')],
                         [(lo.kind, lo.id, lo.run_id) for lo in found])
        self.assertIn("Nova's createImage", found[0].what)
        image = fakes.image(name='osc-backup-tmp-0123456789ab-nova-of-web',
                            owner='p', owner_id='p')
        [lo] = leftovers._images([image], 'p', None)
        self.assertIn("Nova's createImage image", lo.what)
