"""The planning core of ``backup run``: selection, shards, plan, report."""

import hashlib
import os
import subprocess
import sys
import uuid
from unittest import mock

from keystoneauth1 import exceptions as ksa_exc
from openstack import exceptions as sdk_exc
from openstack.compute.v2 import server as _server
from openstack.compute.v2 import volume_attachment as _attachment
from openstack.test import fakes as sdk_fakes

from osc_backup.common import errors
from osc_backup.procedures import run_plan
from osc_backup.procedures import volume_choice
from osc_backup.tests.unit import base
from osc_backup.tests.unit import fakes
from osc_backup.tests.unit.test_volume_backup import backup
from osc_backup.tests.unit.test_volume_backup import http_error
from osc_backup.tests.unit.test_volume_backup import service


def server(volume_ids=(), **attrs):
    """A listed server (details), with Nova's view of its volumes."""
    defaults = {
        'name': 'web',
        'status': 'ACTIVE',
        'metadata': {},
        'attached_volumes': [
            {'id': v, 'delete_on_termination': False} for v in volume_ids
        ],
    }
    defaults.update(attrs)
    return sdk_fakes.generate_fake_resource(_server.Server, **defaults)


def volume(server_ids=(), **attrs):
    """A listed volume, with Cinder's view of its attachments."""
    attrs.setdefault('availability_zone', 'nova')
    attrs.setdefault('attachments', [
        {'server_id': s, 'attachment_id': uuid.uuid4().hex}
        for s in server_ids
    ])
    if server_ids:
        attrs.setdefault('status', 'in-use')
    return fakes.volume(**attrs)


TEMPORARY = {
    'osc_backup_tool': 'osc-backup',
    'osc_backup_temporary': 'true',
    'osc_backup_run_id': '0123456789ab',
}


class Cloud(base.TestCase):
    """Autospecced proxies behind a few volumes and servers."""

    def setUp(self):
        super().setUp()
        self.bs, _ = fakes.make_proxies()
        self.compute = fakes.make_compute_proxy()
        self.conn = mock.Mock(block_storage=self.bs, compute=self.compute)
        self.volumes = []
        self.servers = []
        self.bs.volumes.side_effect = lambda **kw: iter(self.volumes)
        self.compute.servers.side_effect = lambda **kw: iter(self.servers)
        self.bs.find_volume.side_effect = self._finder(
            lambda: self.volumes, 'volume')
        self.compute.find_server.side_effect = self._finder(
            lambda: self.servers, 'server')

    @staticmethod
    def _finder(resources, kind):
        def find(name_or_id, ignore_missing=True, **kwargs):
            found = [r for r in resources() if r.id == name_or_id]
            found = found or [r for r in resources() if r.name == name_or_id]
            if len(found) > 1:
                raise sdk_exc.DuplicateResource(f'many {kind}s')
            if not found:
                raise sdk_exc.NotFoundException(f'no {kind}')
            return found[0]
        return find

    def select(self, **criteria):
        return run_plan.select(self.conn, run_plan.Criteria(**criteria))

    @staticmethod
    def ids(selection):
        return [(t.kind, t.id) for t in selection.targets]

    def assert_no_extra_requests(self):
        """Only look-ups and one listing per kind: no GET per resource."""
        self.bs.get_volume.assert_not_called()
        self.compute.get_server.assert_not_called()
        self.compute.volume_attachments.assert_not_called()
        self.assertLessEqual(self.bs.volumes.call_count, 1)
        self.assertLessEqual(self.compute.servers.call_count, 1)


class TestSelect(Cloud):
    def test_nothing_selected(self):
        exc = self.assertRaises(errors.InvalidInput, self.select,
                                exclude=['x'])
        self.assertIn('Nothing selected', str(exc))
        self.bs.volumes.assert_not_called()
        self.compute.servers.assert_not_called()

    def test_named_resources_deduplicated_by_id(self):
        a = volume(name='a')
        web = server(name='web')
        self.volumes = [a, volume(name='b')]
        self.servers = [web]
        sel = self.select(volumes=['a', a.id], servers=['web', web.id])
        self.assertEqual(
            [('server', web.id), ('volume', a.id)], self.ids(sel)
        )
        # named look-ups only: no listing for named resources
        self.bs.volumes.assert_not_called()
        self.compute.servers.assert_not_called()
        self.bs.find_volume.assert_called_with(a.id, ignore_missing=False)

    def test_named_volume_not_found(self):
        exc = self.assertRaises(errors.InvalidInput, self.select,
                                volumes=['nope'])
        self.assertEqual("No volume with name or ID 'nope' found.", str(exc))

    def test_named_server_ambiguous(self):
        self.servers = [server(name='web'), server(name='web')]
        exc = self.assertRaises(errors.InvalidInput, self.select,
                                servers=['web'])
        self.assertIn("More than one server is named 'web'", str(exc))

    def test_all_volumes_one_listing_temporaries_left_out(self):
        b, a = volume(name='b'), volume(name='a')
        tmp = volume(name='osc-backup-tmp-x', metadata=TEMPORARY)
        self.volumes = [b, tmp, a]
        sel = self.select(all_volumes=True, volumes=['a'])
        self.assertEqual([('volume', a.id), ('volume', b.id)], self.ids(sel))
        self.bs.volumes.assert_called_once_with(details=True)
        self.compute.servers.assert_not_called()
        self.assertIn('1 temporary volume(s)', ' '.join(sel.notes))
        self.assert_no_extra_requests()

    def test_all_servers_and_volumes_fold_attached_volumes(self):
        # Nova's view only (a listing that lacks Cinder's attachment)
        nova_only = volume(name='n', attachments=[])
        web, db = server([nova_only.id], name='web'), server(name='db')
        self.assertIsInstance(  # the SDK's shape, not a plain dict
            web.attached_volumes[0], _attachment.VolumeAttachment)
        # Cinder's view only
        cinder_only = volume([db.id], name='c')
        free = volume(name='free')
        # attached to a server that is not selected: stays a volume
        self.volumes = [nova_only, cinder_only, free]
        self.servers = [web, db]
        sel = self.select(all_servers=True, all_volumes=True)
        self.assertEqual(
            [('server', db.id), ('server', web.id), ('volume', free.id)],
            self.ids(sel),
        )
        folded = {t.id: t.folded for t in sel.targets}
        self.assertEqual([cinder_only.id], folded[db.id])
        self.assertEqual([nova_only.id], folded[web.id])
        self.assertEqual([], folded[free.id])
        notes = '\n'.join(sel.notes)
        self.assertIn(f'volume {nova_only.id} (n) is attached to server '
                      f'{web.id} (web)', notes)
        self.assertIn(f'volume {cinder_only.id} (c) is attached', notes)
        self.assert_no_extra_requests()

    def test_volume_of_unselected_server_is_kept(self):
        other = server(name='other')
        vol = volume([other.id], name='v')
        self.volumes, self.servers = [vol], [other, server(name='web')]
        sel = self.select(volumes=['v'], servers=['web'])
        self.assertEqual(('volume', vol.id), self.ids(sel)[1])
        self.assertEqual([], sel.targets[0].folded)

    def test_named_volume_folded_into_named_server(self):
        web = server(name='web')
        vol = volume([web.id], name='v')
        self.volumes, self.servers = [vol], [web]
        sel = self.select(volumes=['v'], servers=['web'])
        self.assertEqual([('server', web.id)], self.ids(sel))
        self.assertEqual([vol.id], sel.targets[0].folded)

    def test_multiattached_volume_folded_once(self):
        s1, s2 = server(name='s1', id='1' * 32), server(name='s2',
                                                         id='2' * 32)
        vol = volume([s2.id, s1.id], name='shared')
        self.volumes, self.servers = [vol], [s1, s2]
        sel = self.select(all_servers=True, all_volumes=True)
        self.assertEqual([vol.id], sel.targets[0].folded)   # s1: lowest ID
        self.assertEqual([], sel.targets[1].folded)
        self.assertEqual(1, sum(len(t.folded) for t in sel.targets))

    def test_property_selects_both_kinds_all_pairs_must_match(self):
        daily = {'backup': 'daily', 'tier': 'gold'}
        v_yes = volume(name='vy', metadata=daily)
        v_part = volume(name='vp', metadata={'backup': 'daily'})
        v_other = volume(name='vo', metadata={'backup': 'weekly',
                                              'tier': 'gold'})
        s_yes = server(name='sy', metadata=dict(daily))
        s_no = server(name='sn', metadata={})
        self.volumes = [v_yes, v_part, v_other]
        self.servers = [s_yes, s_no]
        sel = self.select(properties=daily)
        self.assertEqual(
            [('server', s_yes.id), ('volume', v_yes.id)], self.ids(sel)
        )
        self.bs.volumes.assert_called_once_with(details=True)
        self.compute.servers.assert_called_once_with(details=True)
        self.assert_no_extra_requests()

    def test_property_adds_to_all_volumes(self):
        vol = volume(name='v')
        tagged = server(name='s', metadata={'backup': 'daily'})
        self.volumes, self.servers = [vol], [tagged, server(name='x')]
        sel = self.select(all_volumes=True, properties={'backup': 'daily'})
        self.assertEqual(
            [('server', tagged.id), ('volume', vol.id)], self.ids(sel)
        )
        self.assert_no_extra_requests()

    def test_property_without_compute_selects_volumes(self):
        vol = volume(name='v', metadata={'backup': 'daily'})
        self.volumes = [vol]
        self.compute.servers.side_effect = ksa_exc.EndpointNotFound()
        sel = self.select(properties={'backup': 'daily'})
        self.assertEqual([('volume', vol.id)], self.ids(sel))
        self.assertIn('no compute (Nova) service', sel.notes[0])

    def test_all_servers_without_compute(self):
        self.compute.servers.side_effect = sdk_exc.EndpointNotFound()
        exc = self.assertRaises(errors.InvalidInput, self.select,
                                all_servers=True)
        self.assertIn('no compute (Nova) service', str(exc))

    def test_property_may_name_our_own_keys(self):
        # a filter forges nothing: restored volumes carry osc_backup_* keys
        restored = volume(name='r', metadata={
            'osc_backup_restored_from': 'img'})
        self.volumes = [restored, volume(name='x')]
        self.compute.servers.side_effect = sdk_exc.EndpointNotFound()
        sel = self.select(properties={'osc_backup_restored_from': 'img'})
        self.assertEqual([('volume', restored.id)], self.ids(sel))

    def test_exclude_by_id_and_by_name(self):
        a, b, c = volume(name='a'), volume(name='b'), volume(name='c')
        web = server(name='web')
        self.volumes, self.servers = [a, b, c], [web]
        sel = self.select(all_volumes=True, all_servers=True,
                          exclude=[a.id, 'web'])
        self.assertEqual([('volume', b.id), ('volume', c.id)], self.ids(sel))

    def test_exclude_wins_over_named(self):
        a = volume(name='a')
        self.volumes = [a]
        sel = self.select(volumes=['a'], exclude=['a'])
        self.assertEqual([], sel.targets)

    def test_exclude_ambiguous_name(self):
        self.volumes = [volume(name='data'), volume(name='data')]
        self.servers = [server(name='web')]
        exc = self.assertRaises(errors.InvalidInput, self.select,
                                all_volumes=True, exclude=['data'])
        self.assertIn("--exclude 'data' names more than one", str(exc))
        self.assertIn('use its ID', str(exc))

    def test_exclude_same_name_volume_and_server_is_ambiguous(self):
        self.volumes = [volume(name='db')]
        self.servers = [server(name='db')]
        self.assertRaises(errors.InvalidInput, self.select,
                          all_volumes=True, all_servers=True,
                          exclude=['db'])

    def test_exclude_matching_nothing_is_a_note(self):
        a = volume(name='a')
        self.volumes = [a]
        sel = self.select(all_volumes=True, exclude=['gone\x1b[2J'])
        self.assertEqual([('volume', a.id)], self.ids(sel))
        self.assertIn("--exclude 'gone\\x1b[2J': no selected", sel.notes[0])

    def test_excluded_server_leaves_its_volumes_standalone(self):
        web = server(name='web')
        vol = volume([web.id], name='v')
        self.volumes, self.servers = [vol], [web]
        sel = self.select(all_volumes=True, all_servers=True,
                          exclude=['web'])
        self.assertEqual([('volume', vol.id)], self.ids(sel))

    def test_excluded_volume_covered_by_selected_server(self):
        web = server(name='web')
        vol = volume([web.id], name='v')
        self.volumes, self.servers = [vol], [web]
        exc = self.assertRaises(errors.InvalidInput, self.select,
                                all_volumes=True, all_servers=True,
                                exclude=['v'])
        self.assertIn(f'is attached to selected server {web.id}', str(exc))

    def test_names_escaped_in_notes(self):
        web = server(name='web\x1b[2J\n')
        vol = volume([web.id], name='v\u202e')
        self.volumes, self.servers = [vol], [web]
        sel = self.select(all_volumes=True, all_servers=True)
        note = sel.notes[0]
        self.assertIn('web\\x1b[2J\\n', note)
        self.assertIn('v\\u202e', note)
        self.assertNotIn('\x1b', note)
        self.assertNotIn('\n', note)
        # the row keeps the cloud's name (the command layer escapes it)
        self.assertEqual('web\x1b[2J\n', sel.targets[0].name)


#: fixed IDs and their shards for N = 2, 3, 4, 7, 10, frozen once: a
#: change of the hash would move every resource between cron hosts
FIXED = {
    '0b7c8d8e-3a2f-4c55-9a0e-6f1d2c3b4a59': [1, 0, 3, 6, 1],
    '5f0e4a3b-9c1d-4e2f-8a7b-1c2d3e4f5a6b': [1, 0, 1, 5, 9],
    'c2a1e0f9-8d7c-4b6a-9f8e-7d6c5b4a3f2e': [1, 0, 3, 1, 5],
    'ffffffff-ffff-ffff-ffff-ffffffffffff': [0, 1, 2, 5, 0],
}
COUNTS = [2, 3, 4, 7, 10]


def independent_shard(resource_id, count):
    return int(hashlib.sha256(resource_id.encode()).hexdigest(), 16) % count


class TestShard(base.TestCase):
    def test_parse(self):
        self.assertEqual(run_plan.Shard(0, 1), run_plan.parse_shard('0/1'))
        self.assertEqual(run_plan.Shard(2, 3), run_plan.parse_shard('2/3'))
        self.assertEqual(run_plan.Shard(1, 4),
                         run_plan.parse_shard(' 1/4\n'))
        self.assertEqual(run_plan.Shard(7, 10),
                         run_plan.parse_shard('07/10'))
        self.assertEqual('2/3', str(run_plan.Shard(2, 3)))

    def test_parse_bad(self):
        for text, says in [
            ('', 'expected I/N'),
            ('3', 'expected I/N'),
            ('1/2/3', 'expected I/N'),
            ('-1/3', 'expected I/N'),
            ('+1/3', 'expected I/N'),
            ('a/b', 'expected I/N'),
            ('1 / 3', 'expected I/N'),
            ('1.0/3', 'expected I/N'),
            ('\u0661/\u0662', 'expected I/N'),  # Arabic-Indic digits
            ('0/0', 'must be at least 1'),
            ('3/3', 'counts from 0 to N-1 (0 to 2 here)'),
            ('5/2', 'counts from 0 to N-1 (0 to 1 here)'),
        ]:
            exc = self.assertRaises(errors.InvalidInput,
                                    run_plan.parse_shard, text)
            self.assertIn(says, str(exc), text)
            self.assertTrue(str(exc).startswith('--shard '), text)

    def test_parse_bad_escapes_input(self):
        exc = self.assertRaises(errors.InvalidInput, run_plan.parse_shard,
                                '1\x1b[2J/2')
        self.assertNotIn('\x1b', str(exc))

    def test_fixed_ids_fixed_shards(self):
        for resource_id, expected in FIXED.items():
            got = [run_plan.shard_of(resource_id, n) for n in COUNTS]
            self.assertEqual(expected, got, resource_id)
            self.assertEqual(
                [independent_shard(resource_id, n) for n in COUNTS], got
            )

    def test_same_shard_in_another_process(self):
        # Python's hash() of a str changes with PYTHONHASHSEED; ours not
        code = (
            'import sys\n'
            'from osc_backup.procedures import run_plan\n'
            'print(" ".join(str(run_plan.shard_of(i, 7)) '
            'for i in sys.argv[1:]))\n'
        )
        env = dict(os.environ, PYTHONHASHSEED='12345')
        out = subprocess.run(
            [sys.executable, '-c', code, *FIXED], env=env, check=True,
            capture_output=True, text=True,
        ).stdout.split()
        self.assertEqual([str(v[3]) for v in FIXED.values()], out)

    def test_disjoint_and_covering(self):
        ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f'r{i}'))
               for i in range(2000)]
        for count in (1, 2, 3, 7, 16):
            shards = [run_plan.Shard(i, count) for i in range(count)]
            owners = {r: [s.index for s in shards if s.holds(r)]
                      for r in ids}
            for r, found in owners.items():
                self.assertEqual([independent_shard(r, count)], found)
            sizes = [sum(1 for f in owners.values() if f == [i])
                     for i in range(count)]
            self.assertEqual(len(ids), sum(sizes))
            # roughly even: no shard has less than half its share
            self.assertGreater(min(sizes), len(ids) / count / 2, sizes)

    def test_take_shard_keeps_servers_with_their_volumes(self):
        targets = [
            run_plan.Target(run_plan.SERVER, server(id=i, name=i),
                            folded=[f'{i}-vol'])
            for i in FIXED
        ]
        first = run_plan.take_shard(targets, run_plan.parse_shard('0/2'))
        second = run_plan.take_shard(targets, run_plan.parse_shard('1/2'))
        self.assertEqual(['ffffffff-ffff-ffff-ffff-ffffffffffff'],
                         [t.id for t in first])
        self.assertEqual(3, len(second))
        self.assertEqual(targets, run_plan.take_shard(targets, None))
        self.assertEqual(['ffffffff-ffff-ffff-ffff-ffffffffffff-vol'],
                         first[0].folded)


class TestPlan(Cloud):
    def targets(self, *resources):
        return [
            run_plan.Target(
                run_plan.SERVER if isinstance(r, _server.Server)
                else run_plan.VOLUME, r,
            )
            for r in resources
        ]

    def assert_nothing_changed(self):
        for name in ('create_backup', 'delete_backup', 'create_snapshot',
                     'create_volume', 'delete_volume', 'post', 'delete'):
            getattr(self.bs, name).assert_not_called()

    def test_auto_asks_once_per_zone(self):
        self.bs.services.return_value = [service(availability_zone='nova')]
        v1, v2 = volume(name='a'), volume(name='b')
        far = volume(name='c', availability_zone='az9')
        web = server(name='web')
        targets = self.targets(web, v1, v2, far)
        targets[0].folded = ['f1']
        rows = run_plan.plan(self.conn, targets)
        self.assertEqual(2, self.bs.services.call_count)
        self.assertEqual([run_plan.PLANNED] * 4, [r.result for r in rows])
        self.assertEqual(['auto', 'backup', 'backup', 'image'],
                         [r.method for r in rows])
        self.assertIn('cinder-backup is up', rows[1].reason)
        self.assertIn("no enabled cinder-backup service is up in zone "
                      "'az9'", rows[3].reason)
        self.assertIn('createImage', rows[0].reason)
        self.assertIn('includes selected volume(s) f1', rows[0].reason)
        # each volume its own Choice: a fall-back changes one volume only
        self.assertIsNot(targets[1].choice, targets[2].choice)
        self.assertEqual('backup', targets[1].choice.method)
        self.assertIsNone(targets[0].choice)
        self.assert_nothing_changed()

    def test_a_run_shares_one_choice_per_zone(self):
        self.bs.services.return_value = [service(availability_zone='nova')]
        v1, v2 = volume(name='a'), volume(name='b')
        far = volume(name='c', availability_zone='az9')
        targets = self.targets(v1, v2, far)
        with mock.patch.object(
            volume_choice, 'choose', wraps=volume_choice.choose
        ) as choose:
            run_plan.plan(self.conn, targets, probe=True)
        self.assertEqual(2, choose.call_count)
        self.assertTrue(all(c.kwargs['probe'] for c in choose.call_args_list))
        # a fall-back one of them learns applies to its zone
        self.assertIs(targets[0].choice, targets[1].choice)
        self.assertIsNot(targets[0].choice, targets[2].choice)

    def test_member_dry_run_does_not_probe(self):
        self.bs.services.side_effect = http_error(
            sdk_exc.ForbiddenException, 403, 'Policy does not allow')
        self.bs.backups.return_value = [backup(
            status='error',
            fail_reason='Service not found for creating backup.',
            metadata={'osc_backup_tool': 'osc-backup'},
        )]
        rows = run_plan.plan(self.conn, self.targets(volume(name='a')))
        self.assertEqual('image', rows[0].method)
        self.assertIn('not re-checked in a dry run', rows[0].reason)
        self.assert_nothing_changed()

    def test_requested_method_asks_nothing(self):
        rows = run_plan.plan(
            self.conn, self.targets(server(name='s'), volume(name='v')),
            volume_choice.IMAGE,
        )
        self.assertEqual(['image', 'image'], [r.method for r in rows])
        self.assertIn('--via-image', rows[0].reason)
        self.assertEqual('requested with --via-image', rows[1].reason)
        self.bs.services.assert_not_called()
        self.bs.backups.assert_not_called()

    def test_image_only_options_decide(self):
        rows = run_plan.plan(self.conn, self.targets(volume(name='v')),
                             image_only=['--download'])
        self.assertEqual('image', rows[0].method)
        self.assertIn('--download needs the image path', rows[0].reason)
        self.bs.services.assert_not_called()

    def test_backup_only_options_without_service(self):
        self.bs.services.return_value = []
        self.assertRaises(
            errors.InvalidInput, run_plan.plan, self.conn,
            self.targets(volume(name='v')), backup_only=['--incremental'],
        )

    def test_unknown_method(self):
        self.assertRaises(errors.InvalidInput, run_plan.plan, self.conn,
                          [], 'tape')


class TestReport(base.TestCase):
    def row(self, result, size=None, **kw):
        target = run_plan.Target(run_plan.VOLUME, volume(name='v'))
        return run_plan.result_for(target, result, method='image',
                                   size_bytes=size, **kw)

    def test_row(self):
        vol = volume(name='v\x1b')
        target = run_plan.Target(run_plan.VOLUME, vol)
        res = run_plan.result_for(
            target, run_plan.FAILED, method='backup', backups=['b1'],
            size_bytes=5, duration=1.234,
            error=errors.BackupError('Quota\nexceeded'),
        )
        self.assertEqual(len(run_plan.COLUMNS), len(res.row()))
        self.assertEqual(
            (vol.id, 'volume', 'v\x1b', 'failed', 'backup', ['b1'], 5, 1.2,
             'Quota exceeded'),
            res.row(),
        )

    def test_unknown_result(self):
        self.assertRaises(ValueError, self.row, 'maybe')

    def test_summary_and_exit_codes(self):
        ok = [self.row('ok', 10), self.row('ok', 20)]
        self.assertEqual(0, run_plan.exit_code(ok))
        self.assertEqual(0, run_plan.exit_code([]))  # an empty shard
        failed = [*ok, self.row('failed', error='boom')]
        self.assertEqual(1, run_plan.exit_code(failed))
        self.assertEqual(1, run_plan.exit_code([*ok, self.row('skipped')]))
        self.assertEqual(0, run_plan.exit_code([self.row('planned')]))
        summary = run_plan.summarize([*failed, self.row('skipped')], 52.04)
        self.assertEqual(
            (4, 2, 1, 1, 0, 30, 52.04),
            (summary.total, summary.ok, summary.failed, summary.skipped,
             summary.planned, summary.size_bytes, summary.duration),
        )
        self.assertEqual(
            '4 resource(s): 2 ok, 1 failed, 1 skipped; 30 bytes in 52.0 s',
            summary.line(),
        )
        self.assertEqual(
            '1 resource(s) planned, nothing started.',
            run_plan.summarize([self.row('planned')], 0.1).line(),
        )
