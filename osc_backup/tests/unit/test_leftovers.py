import io
import shlex
from unittest import mock

from openstack import exceptions as sdk_exc

from osc_backup.common.progress import Reporter
from osc_backup.procedures import leftovers
from osc_backup.tests.unit import base
from osc_backup.tests.unit import fakes

TMP = {
    'osc_backup_tool': 'osc-backup',
    'osc_backup_temporary': 'true',
    'osc_backup_run_id': 'r1',
}


class TestLeftovers(base.TestCase):
    def setUp(self):
        super().setUp()
        self.bs, _ = fakes.make_proxies()
        self.conn = mock.Mock(block_storage=self.bs)
        self.mine = fakes.volume(metadata=TMP)
        self.other_run = fakes.volume(metadata=dict(TMP, osc_backup_run_id='r2'))
        self.user_vol = fakes.volume(metadata={'osc_backup_temporary': 'true'})
        self.snap = fakes.snapshot(metadata=TMP)
        self.bs.volumes.return_value = [
            self.mine, self.other_run, self.user_vol,
        ]
        self.bs.snapshots.return_value = [self.snap, fakes.snapshot()]
        self.bs.get_volume.side_effect = lambda vid: fakes.volume(
            id=vid, status='available'
        )
        self.bs.get_snapshot.side_effect = lambda sid: fakes.snapshot(
            id=sid, status='available'
        )

    def test_find_only_ours(self):
        found = leftovers.find_leftovers(self.conn)
        self.assertEqual(
            {self.mine.id, self.other_run.id, self.snap.id},
            {lo.id for lo in found},
        )
        by_run = leftovers.find_leftovers(self.conn, 'r1')
        self.assertEqual(
            {self.mine.id, self.snap.id}, {lo.id for lo in by_run}
        )

    def test_remove_volumes_first_and_report_failures(self):
        order = []
        self.bs.delete_volume.side_effect = (
            lambda v, **k: order.append(v.id)
        )

        def del_snap(s, **k):
            order.append(s.id)
            raise sdk_exc.HttpException('snapshot busy')

        self.bs.delete_snapshot.side_effect = del_snap
        found = leftovers.find_leftovers(self.conn, 'r1')
        failed = leftovers.remove_leftovers(
            self.conn, found, Reporter(io.StringIO(), progress=False),
            interval=0,
        )
        self.assertEqual([self.mine.id, self.snap.id], order)
        self.assertEqual([self.snap.id], [lo.id for lo in failed])
        self.assertTrue(failed[0].result.startswith('failed'))
        self.assertEqual(
            f'openstack volume snapshot delete {self.snap.id}',
            failed[0].remove_command,
        )


class TestRemoveCommand(base.TestCase):
    def test_shell_quoted(self):
        hostile = 'x; rm -rf ~'
        for kind, noun in (('volume', ['volume']),
                           ('snapshot', ['volume', 'snapshot'])):
            lo = leftovers.Leftover(kind, hostile, None, None, None, None)
            self.assertEqual(['openstack', *noun, 'delete', hostile],
                             shlex.split(lo.remove_command))
