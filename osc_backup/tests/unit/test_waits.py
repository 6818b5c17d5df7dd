from unittest import mock

from openstack import exceptions as sdk_exc

from osc_backup.common import errors
from osc_backup.common import waits
from osc_backup.tests.unit import base
from osc_backup.tests.unit import fakes


class TestWaitForStatus(base.TestCase):
    def setUp(self):
        super().setUp()
        self.bs, self.image = fakes.make_proxies()
        self.vol = fakes.volume(status='creating')
        self.bs.get_volume.return_value = self.vol

    def test_success_returns_refreshed_resource(self):
        done = fakes.volume(id=self.vol.id, status='available')
        self.bs.get_volume.return_value = self.vol
        self.bs.wait_for_status.return_value = done
        result = waits.wait_for_status(
            self.bs, self.vol, 'available', kind='volume', step='s',
            timeout=30,
        )
        self.assertIs(done, result)
        self.bs.wait_for_status.assert_called_once_with(
            self.vol,
            status='available',
            failures=waits.FAILURES['volume'],
            interval=waits.DEFAULT_INTERVAL,
            wait=30,
        )

    def test_failure_names_step_id_status_and_fault(self):
        self.bs.wait_for_status.side_effect = sdk_exc.ResourceFailure('x')
        self.bs.get_volume.return_value = fakes.volume(
            id=self.vol.id, status='error'
        )
        msg = mock.Mock(
            resource_uuid=self.vol.id, user_message='No valid host'
        )
        self.bs.messages.return_value = iter([msg])
        exc = self.assertRaises(
            errors.WaitError,
            waits.wait_for_status,
            self.bs, self.vol, 'available', kind='volume',
            step='create temporary volume', timeout=30,
        )
        text = str(exc)
        self.assertIn("create temporary volume", text)
        self.assertIn(self.vol.id, text)
        self.assertIn("'error'", text)
        self.assertIn('No valid host', text)

    def test_fault_lookup_failure_does_not_mask_error(self):
        self.bs.wait_for_status.side_effect = sdk_exc.ResourceFailure('x')
        self.bs.get_volume.return_value = fakes.volume(
            id=self.vol.id, status='error'
        )
        self.bs.messages.side_effect = sdk_exc.HttpException('boom')
        exc = self.assertRaises(
            errors.WaitError,
            waits.wait_for_status,
            self.bs, self.vol, 'available', kind='volume', step='s',
            timeout=30,
        )
        self.assertIn("went to status 'error'", str(exc))

    def test_timeout_message(self):
        self.bs.wait_for_status.side_effect = sdk_exc.ResourceTimeout('t')
        self.bs.get_volume.return_value = fakes.volume(
            id=self.vol.id, status='creating'
        )
        exc = self.assertRaises(
            errors.WaitTimeout,
            waits.wait_for_status,
            self.bs, self.vol, 'available', kind='volume',
            step='create temporary volume', timeout=12,
        )
        text = str(exc)
        self.assertIn('Timed out after 12s', text)
        self.assertIn("'creating'", text)
        self.assertIn('--timeout', text)
        self.assertIn(f'openstack volume show {self.vol.id}', text)

    def test_vanished_resource(self):
        self.bs.wait_for_status.side_effect = sdk_exc.ResourceFailure('x')
        self.bs.get_volume.side_effect = sdk_exc.NotFoundException('gone')
        exc = self.assertRaises(
            errors.WaitError,
            waits.wait_for_status,
            self.bs, self.vol, 'available', kind='volume', step='s',
            timeout=30,
        )
        self.assertIn('disappeared', str(exc))

    def test_spent_deadline_fails_without_polling(self):
        clock = mock.Mock(side_effect=[0.0, 100.0])
        deadline = waits.Deadline(10, clock=clock)
        self.assertRaises(
            errors.WaitTimeout,
            waits.wait_for_status,
            self.bs, self.vol, 'available', kind='volume', step='s',
            timeout=deadline,
        )
        self.bs.wait_for_status.assert_not_called()

    def test_deadline_passes_remaining_time(self):
        clock = mock.Mock(side_effect=[0.0] + [40.0] * 5)
        deadline = waits.Deadline(100, clock=clock)
        self.bs.wait_for_status.return_value = self.vol
        waits.wait_for_status(
            self.bs, self.vol, 'available', kind='volume', step='s',
            timeout=deadline,
        )
        self.assertEqual(60, self.bs.wait_for_status.call_args.kwargs['wait'])

    def test_image_failure_states(self):
        for state in ('killed', 'deleted', 'deactivated'):
            self.assertIn(state, waits.FAILURES['image'])
        for state in ('error', 'error_restoring', 'error_extending'):
            self.assertIn(state, waits.FAILURES['volume'])


class TestWaitForDelete(base.TestCase):
    def test_timeout(self):
        bs, _ = fakes.make_proxies()
        vol = fakes.volume(status='deleting')
        bs.wait_for_delete.side_effect = sdk_exc.ResourceTimeout('t')
        bs.get_volume.return_value = vol
        exc = self.assertRaises(
            errors.WaitTimeout,
            waits.wait_for_delete,
            bs, vol, kind='volume', step='delete temporary volume',
            timeout=5,
        )
        self.assertIn("still there with status 'deleting'", str(exc))

    def test_bounded(self):
        bs, _ = fakes.make_proxies()
        vol = fakes.volume()
        waits.wait_for_delete(bs, vol, kind='volume', step='s', timeout=7)
        bs.wait_for_delete.assert_called_once_with(
            vol, interval=waits.DEFAULT_INTERVAL, wait=7
        )


class TestTransientErrors(base.TestCase):
    def setUp(self):
        super().setUp()
        self.bs, _ = fakes.make_proxies()
        self.vol = fakes.volume(status='creating')
        self.done = fakes.volume(id=self.vol.id, status='available')

    def test_dropped_connection_is_ridden_out(self):
        from keystoneauth1 import exceptions as ks_exc

        self.bs.wait_for_status.side_effect = [
            ks_exc.ConnectFailure('Remote end closed connection'),
            sdk_exc.HttpException('bad gateway', http_status=502),
            self.done,
        ]
        result = waits.wait_for_status(
            self.bs, self.vol, 'available', kind='volume', step='s',
            timeout=60, interval=0,
        )
        self.assertIs(self.done, result)
        self.assertEqual(3, self.bs.wait_for_status.call_count)

    def test_too_many_blips_fail_clearly(self):
        from keystoneauth1 import exceptions as ks_exc

        self.bs.wait_for_status.side_effect = ks_exc.ConnectFailure('down')
        exc = self.assertRaises(
            errors.WaitError,
            waits.wait_for_status,
            self.bs, self.vol, 'available', kind='volume',
            step='create temporary volume', timeout=60, interval=0,
        )
        self.assertIn('lost contact with the cloud', str(exc))
        self.assertIn('create temporary volume', str(exc))
        self.assertEqual(
            waits.TRANSIENT_RETRIES + 1, self.bs.wait_for_status.call_count
        )

    def test_other_errors_are_not_retried(self):
        self.bs.wait_for_status.side_effect = sdk_exc.HttpException(
            'forbidden', http_status=403
        )
        self.assertRaises(
            sdk_exc.HttpException,
            waits.wait_for_status,
            self.bs, self.vol, 'available', kind='volume', step='s',
            timeout=60, interval=0,
        )
        self.assertEqual(1, self.bs.wait_for_status.call_count)

    def test_delete_wait_rides_out_blips(self):
        from keystoneauth1 import exceptions as ks_exc

        self.bs.wait_for_delete.side_effect = [
            ks_exc.ConnectFailure('reset'), None,
        ]
        waits.wait_for_delete(
            self.bs, self.vol, kind='volume', step='s', timeout=60,
            interval=0,
        )
        self.assertEqual(2, self.bs.wait_for_delete.call_count)


class TestFreshStart(base.TestCase):
    def test_waits_from_the_clouds_view_not_a_stale_object(self):
        # a volume fetched before its upload still says 'available'
        bs, _ = fakes.make_proxies()
        stale = fakes.volume(status='available')
        now = fakes.volume(id=stale.id, status='uploading')
        bs.get_volume.return_value = now
        bs.wait_for_status.return_value = stale
        waits.wait_for_status(
            bs, stale, 'available', kind='volume', step='s', timeout=9
        )
        waited = bs.wait_for_status.call_args.args[0]
        self.assertIs(stale, waited)
        self.assertEqual('uploading', waited.status)

    def test_gone_before_the_wait(self):
        bs, _ = fakes.make_proxies()
        bs.get_volume.side_effect = sdk_exc.NotFoundException('gone')
        exc = self.assertRaises(
            errors.WaitError, waits.wait_for_status, bs, fakes.volume(),
            'available', kind='volume', step='s', timeout=9,
        )
        self.assertIn('disappeared', str(exc))
        bs.wait_for_status.assert_not_called()
