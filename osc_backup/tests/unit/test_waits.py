import itertools
import time
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
            # the policy's first window: 5 polls, 0.2 s apart
            interval=waits.FIRST_INTERVAL,
            wait=waits.FIRST_INTERVAL * waits.POLLS_PER_WINDOW,
        )

    def test_failure_names_step_id_status_and_fault(self):
        self.bs.wait_for_status.side_effect = sdk_exc.ResourceFailure('x')
        self.bs.get_volume.return_value = fakes.volume(
            id=self.vol.id, status='error'
        )
        self.bs.get.return_value = fakes.response(200, {'messages': [
            {'resource_uuid': self.vol.id, 'user_message': 'No valid host'},
        ]})
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
        # user messages exist from Block Storage 3.3 on; without it Cinder
        # answers 404 and the fault is never found
        self.bs.get.assert_called_once_with(
            '/messages', params={'sort': 'created_at:desc', 'limit': 50},
            microversion='3.3',
        )

    def test_newest_user_message_of_the_resource_wins(self):
        self.bs.wait_for_status.side_effect = sdk_exc.ResourceFailure('x')
        self.bs.get_volume.return_value = fakes.volume(
            id=self.vol.id, status='error'
        )
        self.bs.get.return_value = fakes.response(200, {'messages': [
            dict(resource_uuid=self.vol.id, user_message='old',
                 created_at='2026-01-01T00:00:00.000000'),
            dict(resource_uuid='other', user_message='not this one',
                 created_at='2026-01-03T00:00:00.000000'),
            dict(resource_uuid=self.vol.id, user_message='new\x1b[2J',
                 created_at='2026-01-02T00:00:00.000000'),
        ]})
        exc = self.assertRaises(
            errors.WaitError,
            waits.wait_for_status,
            self.bs, self.vol, 'available', kind='volume', step='s',
            timeout=30,
        )
        self.assertTrue(str(exc).endswith(': new\\x1b[2J'), str(exc))

    def test_fault_lookup_failure_does_not_mask_error(self):
        self.bs.wait_for_status.side_effect = sdk_exc.ResourceFailure('x')
        self.bs.get_volume.return_value = fakes.volume(
            id=self.vol.id, status='error'
        )
        self.bs.get.side_effect = sdk_exc.HttpException('boom')
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
            step='create temporary volume', timeout=12, interval=1,
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
            timeout=deadline, interval=3,
        )
        self.assertEqual(60, self.bs.wait_for_status.call_args.kwargs['wait'])
        self.assertEqual(3, self.bs.wait_for_status.call_args.kwargs[
            'interval'])

    def test_last_window_ends_at_the_deadline(self):
        clock = mock.Mock(side_effect=[0.0] + [99.9] * 5)
        deadline = waits.Deadline(100, clock=clock)
        self.bs.wait_for_status.return_value = self.vol
        waits.wait_for_status(
            self.bs, self.vol, 'available', kind='volume', step='s',
            timeout=deadline,
        )
        kwargs = self.bs.wait_for_status.call_args.kwargs
        self.assertAlmostEqual(0.1, kwargs['wait'])
        self.assertAlmostEqual(0.1, kwargs['interval'])

    def test_no_extra_read_when_the_object_in_hand_is_not_done(self):
        # openstacksdk's first poll reads the resource anyway
        self.bs.wait_for_status.return_value = self.vol
        waits.wait_for_status(
            self.bs, self.vol, 'available', kind='volume', step='s',
            timeout=30,
        )
        self.bs.get_volume.assert_not_called()

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
            timeout=5, interval=1,
        )
        self.assertIn("still there with status 'deleting'", str(exc))

    def test_bounded(self):
        bs, _ = fakes.make_proxies()
        vol = fakes.volume()
        waits.wait_for_delete(
            bs, vol, kind='volume', step='s', timeout=7, interval=1
        )
        bs.wait_for_delete.assert_called_once_with(
            vol, interval=1, wait=7, callback=mock.ANY
        )

    def test_adaptive_windows(self):
        bs, _ = fakes.make_proxies()
        vol = fakes.volume()
        bs.wait_for_delete.side_effect = [
            sdk_exc.ResourceTimeout('window'), None,
        ]
        waits.wait_for_delete(bs, vol, kind='volume', step='s', timeout=7)
        self.assertEqual(2, bs.wait_for_delete.call_count)
        first = bs.wait_for_delete.call_args_list[0].kwargs
        self.assertEqual(waits.FIRST_INTERVAL, first['interval'])


class TestRealWaits(base.TestCase):
    """openstacksdk's own polling loops against a fake cloud's statuses."""

    def setUp(self):
        super().setUp()
        self.bs, _ = fakes.make_proxies()
        self.cloud = self.useFixture(fakes.CloudStatuses(self.bs))
        self.vol = fakes.volume(status='deleting')
        self.bs.get_volume.side_effect = lambda vid: self.vol

    def delete_wait(self, **kwargs):
        kwargs.setdefault('timeout', 60)
        kwargs.setdefault('interval', 0.01)
        return waits.wait_for_delete(
            self.bs, self.vol, kind=kwargs.pop('kind', 'volume'),
            step='delete temporary volume', **kwargs,
        )

    def test_waits_until_gone(self):
        self.cloud.timeline(self.vol, 'deleting', 'deleting', None)
        self.delete_wait()
        self.assertEqual(3, self.cloud.polls[self.vol.id])

    def test_error_deleting_gives_up_at_once(self):
        self.cloud.timeline(self.vol, 'deleting', 'error_deleting')
        self.bs.get.return_value = fakes.response(200, {'messages': [dict(
            resource_uuid=self.vol.id, created_at='2026',
            user_message='Delete volume failed: the backend is busy')]})
        started = time.monotonic()
        exc = self.assertRaises(errors.DeleteFailed, self.delete_wait)
        self.assertLess(time.monotonic() - started, 1)
        self.assertEqual(2, self.cloud.polls[self.vol.id])
        text = str(exc)
        self.assertIn('delete temporary volume', text)
        self.assertIn(f"could not delete volume {self.vol.id}", text)
        self.assertIn("'error_deleting'", text)
        self.assertIn('the backend is busy', text)
        self.assertEqual(
            '3.3', self.bs.get.call_args.kwargs['microversion'])

    def test_a_failed_backup_deletion_is_error(self):
        backup = fakes.volume(status='deleting')  # any resource will do
        self.vol = backup
        self.cloud.timeline(backup, 'deleting', 'error')
        self.assertRaises(errors.DeleteFailed, self.delete_wait, kind='backup')

    def test_error_is_not_a_failed_volume_deletion(self):
        # a volume in 'error' is deleted from there; only error_deleting
        # says the deletion failed
        self.cloud.timeline(self.vol, 'error', 'deleting', None)
        self.delete_wait()

    def test_cap_bounds_a_longer_timeout_and_names_its_option(self):
        self.cloud.timeline(self.vol, 'deleting')
        started = time.monotonic()
        with waits.capped(1, '--cleanup-timeout'):
            exc = self.assertRaises(
                errors.WaitTimeout, self.delete_wait, timeout=600,
                interval=0.05,
            )
        self.assertLess(time.monotonic() - started, 3)
        self.assertIn('--cleanup-timeout', str(exc))
        self.assertIn("still there with status 'deleting'", str(exc))

    def test_put_back_ends_the_wait_when_asked(self):
        # Cinder sets a snapshot its driver reports busy back to available
        self.cloud.timeline(self.vol, 'deleting', 'available')
        exc = self.assertRaises(
            errors.DeleteRefused, self.delete_wait, kind='snapshot',
            refused=('available',),
        )
        self.assertIn("is 'available' again", str(exc))

    def test_status_waits_are_capped_too(self):
        self.cloud.timeline(self.vol, 'creating')
        with waits.capped(1, '--cleanup-timeout'):
            exc = self.assertRaises(
                errors.WaitTimeout, waits.wait_for_status, self.bs,
                self.vol, 'available', kind='volume', step='s',
                timeout=600, interval=0.05,
            )
        self.assertIn('raise --cleanup-timeout', str(exc))

    def test_own_timeout_when_shorter_than_the_cap(self):
        self.cloud.timeline(self.vol, 'creating')
        with waits.capped(600, '--cleanup-timeout'):
            exc = self.assertRaises(
                errors.WaitTimeout, waits.wait_for_status, self.bs,
                self.vol, 'available', kind='volume', step='s',
                timeout=1, interval=0.05,
            )
        self.assertIn('raise --timeout', str(exc))

    def test_nested_caps_keep_the_earlier_end(self):
        with waits.capped(5, 'outer'):
            with waits.capped(100, 'inner') as deadline:
                self.assertLessEqual(deadline.remaining(), 5)
            with waits.capped(1, 'inner') as deadline:
                self.assertLessEqual(deadline.remaining(), 1)
        self.assertIsNone(waits._CAP.get())


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
            # the API busy (all its threads serving uploads)
            ks_exc.ConnectTimeout('Request to .../v2/images/x timed out'),
            self.done,
        ]
        result = waits.wait_for_status(
            self.bs, self.vol, 'available', kind='volume', step='s',
            timeout=60, interval=0,
        )
        self.assertIs(self.done, result)
        self.assertEqual(4, self.bs.wait_for_status.call_count)

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


class FakeTime:
    """A virtual clock and sleep."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class TestPollingPolicy(base.TestCase):
    """The schedule of polls, run against a virtual clock with
    openstacksdk's window semantics (poll, sleep the interval, stop when
    the window has passed)."""

    def run_wait(self, done_at, timeout):
        clock = FakeTime()
        polls = []

        def sdk_wait(interval, window):
            start = clock.now
            while clock.now < start + window:
                polls.append(clock.now)
                if clock.now >= done_at:
                    return 'done'
                clock.sleep(interval)
            raise sdk_exc.ResourceTimeout('window')

        deadline = waits.Deadline(timeout, clock=clock)
        try:
            result = waits._polling(
                sdk_wait, deadline, None, 'lost', sleep=clock.sleep,
                clock=clock,
            )
        except sdk_exc.ResourceTimeout:
            result = 'timeout'
        return result, polls, clock.now

    def test_interval_schedule(self):
        self.assertEqual(0.2, waits.poll_interval(0))
        self.assertEqual(0.2, waits.poll_interval(1.9))
        self.assertAlmostEqual(1.0, waits.poll_interval(10))
        self.assertAlmostEqual(4.9, waits.poll_interval(49))
        self.assertEqual(5.0, waits.poll_interval(60))
        self.assertEqual(5.0, waits.poll_interval(36000))

    def test_first_poll_at_once(self):
        result, polls, _ = self.run_wait(done_at=0, timeout=60)
        self.assertEqual('done', result)
        self.assertEqual([0.0], polls)

    def test_done_seen_within_a_tenth_of_the_step(self):
        for done_at in (0.3, 1.0, 2.1, 5.0, 8.1, 17.7, 30.0, 45.0):
            result, polls, end = self.run_wait(done_at, timeout=3600)
            self.assertEqual('done', result)
            late = end - done_at
            # never later than 0.2 s or a tenth (+ one window's growth)
            self.assertLessEqual(
                late, max(0.2, 0.15 * done_at) + 1e-9, (done_at, polls)
            )

    def test_interval_never_above_the_cap(self):
        _, polls, _ = self.run_wait(done_at=5000, timeout=3600)
        gaps = [b - a for a, b in itertools.pairwise(polls)]
        self.assertLessEqual(max(gaps), waits.MAX_INTERVAL + 1e-9)
        self.assertAlmostEqual(waits.FIRST_INTERVAL, gaps[0])

    def test_request_rate_of_a_long_wait(self):
        result, polls, end = self.run_wait(done_at=10**6, timeout=3600)
        self.assertEqual('timeout', result)
        # the deadline holds: no poll after it, the end within one interval
        self.assertLess(polls[-1], 3600)
        self.assertLessEqual(end, 3600 + waits.MAX_INTERVAL)
        # as the module docstring says: about 760 requests in an hour,
        # about 10 in the first 2 s, 12 per minute at the end
        self.assertLess(len(polls), 800)
        self.assertGreater(len(polls), 700)
        self.assertLessEqual(len([t for t in polls if t < 2]), 11)
        last_minute = [t for t in polls if t >= 3600 - 60]
        self.assertLessEqual(len(last_minute), 12)
        # a fixed 0.25 s tick would have made 14,400
        self.assertLess(len(polls), 3600 / 0.25 / 10)

    def test_transient_errors_inside_windows(self):
        from keystoneauth1 import exceptions as ks_exc

        clock = FakeTime()
        calls = []

        def sdk_wait(interval, window):
            calls.append(interval)
            if len(calls) < 3:
                raise ks_exc.ConnectFailure('reset')
            return 'done'

        result = waits._polling(
            sdk_wait, waits.Deadline(60, clock=clock), None, 'lost',
            sleep=clock.sleep, clock=clock,
        )
        self.assertEqual('done', result)
        self.assertEqual(3, len(calls))
