"""The catalog procedure (osc_backup.procedures.catalog): what the tool
made, its chains, prune plans and deletions, on spec'd SDK proxies."""

import datetime
import hashlib
import json
import os
import tempfile
from unittest import mock

from openstack import exceptions as sdk_exc
from openstack.block_storage.v3 import backup as _backup
from openstack.test import fakes as sdk_fakes

from osc_backup.common import backup_set
from osc_backup.common import errors
from osc_backup.common import retention
from osc_backup.common.progress import NullReporter
from osc_backup.procedures import catalog
from osc_backup.tests.unit import base
from osc_backup.tests.unit import fakes

PROJECT = 'p' * 32
VOL = 'vol-1'
RUN = {n: f'{n:012x}' for n in range(1, 10)}


def record(method, run=1, created='2026-01-01T10:00:00+00:00', **extra):
    rec = {
        'osc_backup_tool': 'osc-backup',
        'osc_backup_method': method,
        'osc_backup_run_id': RUN[run],
        'osc_backup_created_at': created,
        'osc_backup_consistency': 'offline',
        'osc_backup_source_volume_id': VOL,
        'osc_backup_source_volume_name': 'data',
    }
    rec.update(extra)
    return rec


def image_body(image_id, name, created, props=None, status='active'):
    body = {
        'id': image_id, 'name': name, 'status': status, 'size': 1024,
        'owner': PROJECT, 'created_at': created,
        # Glance's answer has it; Resource.__init__ takes no 'self'
        'self': f'/v2/images/{image_id}',
    }
    body.update(props or {})
    return body


def backup(backup_id, created, *, metadata=None, incremental=False,
           dependents=False, status='available', volume_id=VOL, name='b'):
    return sdk_fakes.generate_fake_resource(
        _backup.Backup, id=backup_id, name=name, status=status,
        volume_id=volume_id, created_at=created, data_timestamp=created,
        is_incremental=incremental, has_dependent_backups=dependents,
        metadata=metadata if metadata is not None else {}, size=1,
    )


def chain_backups():
    """full <- inc1 <- inc2 of VOL, made by the tool, parents
    recorded."""
    return [
        backup('full', '2026-01-01T10:00:00', dependents=True,
               metadata=record('backup', 1, '2026-01-01T10:00:00+00:00')),
        backup('inc1', '2026-01-02T10:00:00', incremental=True,
               dependents=True,
               metadata=record('backup', 2, '2026-01-02T10:00:00+00:00',
                               osc_backup_parent_backup_id='full')),
        backup('inc2', '2026-01-03T10:00:00', incremental=True,
               metadata=record('backup', 3, '2026-01-03T10:00:00+00:00',
                               osc_backup_parent_backup_id='inc1')),
    ]


def two_image_bodies():
    return [
        image_body('img1', 'data-backup-1', '2026-01-01T11:00:00Z',
                   record('image', 4, '2026-01-01T11:00:00+00:00')),
        image_body('img2', 'data-backup-2', '2026-01-02T11:00:00Z',
                   record('image', 5, '2026-01-02T11:00:00+00:00')),
    ]


class CloudCase(base.TestCase):
    def setUp(self):
        super().setUp()
        self.bs, self.image_proxy = fakes.make_proxies()
        self.conn = mock.Mock(block_storage=self.bs, image=self.image_proxy,
                              current_project_id=PROJECT)
        self.images = []
        self.backups = []
        self.image_proxy.get.side_effect = self._get_images
        self.bs.backups.side_effect = lambda **kw: iter(self.backups)

    def _get_images(self, url, params=None, **kwargs):
        return fakes.response(200, {'images': list(self.images)})

    def chain(self):
        self.backups += chain_backups()

    def two_images(self):
        self.images += two_image_bodies()

    def load(self):
        return catalog.load(self.conn)


class TestListImages(CloudCase):
    def test_one_filtered_paginated_query(self):
        pages = [
            fakes.response(200, {
                'images': [image_body('a', 'a', '2026-01-01T00:00:00Z')],
                'next': '/v2/images?marker=a&limit=1000&osc_backup_tool=x',
            }),
            fakes.response(200, {
                'images': [image_body('b', 'b', '2026-01-01T00:00:00Z')],
            }),
        ]
        self.image_proxy.get.side_effect = pages
        found = catalog.list_images(self.image_proxy, PROJECT)
        self.assertEqual(['a', 'b'], [i.id for i in found])
        first, second = self.image_proxy.get.call_args_list
        self.assertEqual(
            {'osc_backup_tool': 'osc-backup', 'owner': PROJECT,
             'limit': 1000},
            first.kwargs['params'],
        )
        self.assertEqual(
            '/images?marker=a&limit=1000&osc_backup_tool=x', second.args[0]
        )
        self.assertIsNone(second.kwargs['params'])

    def test_error(self):
        self.image_proxy.get.side_effect = None
        self.image_proxy.get.return_value = fakes.response(500, {'x': 1})
        self.assertRaises(errors.BackupError, catalog.list_images,
                          self.image_proxy, PROJECT)


class TestLoad(CloudCase):
    def test_only_what_the_tool_made(self):
        self.chain()
        self.two_images()
        self.images += [
            # a user image with a look-alike name and no record (Glance
            # would not return it; the record is checked again anyway)
            image_body('user', 'data-backup-20260101T100000Z-abcdef',
                       '2026-01-05T00:00:00Z'),
            # an upload in progress (the tool's temporary name)
            image_body('tmp', f'osc-backup-tmp-{RUN[6]}-image-of-data',
                       '2026-01-05T00:00:00Z', record('image', 6)),
            # another tool
            image_body('other', 'x', '2026-01-05T00:00:00Z',
                       {**record('image', 7), 'osc_backup_tool': 'other'}),
        ]
        self.backups += [
            backup('hand', '2026-01-04T10:00:00',
                   name='data-backup-20260104T100000Z-abcdef'),
            # a backup with the tool's record but an image method
            backup('odd', '2026-01-04T10:00:00', metadata=record('image')),
        ]
        cat = self.load()
        self.assertEqual(
            ['inc2', 'img2', 'inc1', 'img1', 'full'],
            [r.id for r in cat.records],
        )
        self.assertEqual([], cat.warnings)
        by_id = cat.by_id()
        self.assertEqual('volume-image', by_id['img1'].kind)
        self.assertEqual('volume-backup', by_id['inc1'].kind)
        self.assertEqual(VOL, by_id['img1'].source_id)
        self.assertEqual('data', by_id['inc1'].source_name)
        self.assertEqual(1024**3, by_id['inc1'].size)
        self.assertEqual(RUN[2], by_id['inc1'].run_id)
        self.bs.backups.assert_called_once_with(details=True)
        self.assertEqual(1, self.image_proxy.get.call_count)

    def test_copies_of_a_record_are_not_backups(self):
        self.two_images()
        # a user's upload of a volume restored from img1 inherits its
        # record through Cinder's volume image metadata
        self.images.append(image_body(
            'copy', 'my-image', '2026-02-01T00:00:00Z',
            record('image', 4, '2026-01-01T11:00:00+00:00'),
        ))
        self.assertEqual(['img2', 'img1'],
                         [r.id for r in self.load().records])

    def test_restores_are_not_backups(self):
        self.two_images()
        # the root disk image 'backup server restore' uploaded from a
        # --download directory (the backup's record, and the restore
        # mark), and a Cinder backup carrying a restored volume's mark
        self.images.append(image_body(
            'restored', 'web-root', '2026-02-01T00:00:00Z',
            record('server-image', 5, osc_backup_server_id='srv',
                   osc_backup_server_disk='root-disk',
                   osc_backup_restored_from='run:' + RUN[4]),
        ))
        self.backups.append(backup(
            'restored-b', '2026-02-01T00:00:00',
            metadata=record('backup', 6,
                            osc_backup_restored_from='backup:x')))
        # not listed, and so never in a prune plan (it plans among these)
        self.assertEqual(['img2', 'img1'],
                         [r.id for r in self.load().records])

    def test_server_image(self):
        self.images.append(image_body(
            'root', 'web-root', '2026-01-01T11:00:00Z',
            record('server-image', 8, osc_backup_server_id='srv',
                   osc_backup_server_name='web'),
        ))
        rec = self.load().records[0]
        self.assertEqual(('server-image', 'srv', 'web'),
                         (rec.kind, rec.source_id, rec.source_name))

    def test_encrypted_image_key(self):
        self.images.append(image_body(
            'enc', 'e', '2026-01-01T11:00:00Z',
            {**record('image'), 'cinder_encryption_key_id': 'key-1'},
        ))
        self.assertEqual('key-1', self.load().records[0].key_id)

    def test_no_backup_metadata_warned(self):
        self.backups.append(backup('b', '2026-01-01T00:00:00'))
        self.backups[0].metadata = None
        cat = self.load()
        self.assertEqual([], cat.records)
        self.assertIn('3.43', cat.warnings[0])


class TestChains(CloudCase):
    def test_recorded(self):
        self.chain()
        by_id = self.load().by_id()
        self.assertEqual(('inc1', 'recorded'),
                         (by_id['inc2'].depends_on, by_id['inc2'].chain))
        self.assertEqual(['inc1'], by_id['full'].dependents)
        self.assertEqual(['inc2'], by_id['inc1'].dependents)
        self.assertIsNone(by_id['full'].depends_on)

    def test_inferred_newest_data_timestamp_before_it(self):
        meta = record('backup')
        self.backups += [
            backup('a', '2026-01-01T10:00:00', metadata=meta),
            backup('b', '2026-01-02T10:00:00', metadata=meta),
            backup('failed', '2026-01-02T12:00:00', status='error'),
            backup('other-vol', '2026-01-02T13:00:00', volume_id='v2'),
            backup('inc', '2026-01-03T10:00:00', incremental=True,
                   metadata=meta),
            backup('later', '2026-01-04T10:00:00', metadata=meta),
        ]
        # b's data is older than a's (a backup of a snapshot, say)
        self.backups[1].data_timestamp = '2025-12-31T00:00:00'
        by_id = self.load().by_id()
        self.assertEqual(('a', 'inferred'),
                         (by_id['inc'].depends_on, by_id['inc'].chain))

    def test_parents(self):
        self.chain()
        parents = catalog.infer_parents(self.backups)
        self.assertEqual({'inc1': ('full', 'recorded'),
                          'inc2': ('inc1', 'recorded')}, parents)

    def test_foreign_dependent(self):
        self.chain()
        self.backups.append(backup(
            'hand-inc', '2026-01-04T10:00:00', incremental=True))
        by_id = self.load().by_id()
        self.assertEqual(['hand-inc'], by_id['inc2'].foreign_dependents)


NOW = datetime.datetime(2026, 1, 10, tzinfo=datetime.UTC)


class TestPrune(CloudCase):
    def plan(self, cat=None, group_by=catalog.GROUP_FIELDS, **policy):
        cat = cat or self.load()
        return catalog.plan_prune(
            cat, cat.records, retention.Policy(**policy), group_by=group_by,
            now=NOW,
        )

    def table(self, plan):
        return {d.entry.id: (d.action, d.reasons) for d in plan.decisions}

    def test_keep_last_one_keeps_the_chain(self):
        self.chain()
        self.two_images()
        plan = self.plan(last=1)
        self.assertEqual({
            'inc2': ('keep', ['newest', 'last']),
            'inc1': ('keep', ['base of inc2']),
            'full': ('keep', ['base of inc1']),
            'img2': ('keep', ['newest', 'last']),
            'img1': ('delete', []),
        }, self.table(plan))
        self.assertEqual(['img1'], [u.id for u in plan.order])

    def test_group_by_source_merges_kinds(self):
        self.chain()
        self.two_images()
        plan = self.plan(last=1, group_by=('source',))
        self.assertEqual(['img2', 'img1'], [u.id for u in plan.order])

    def test_old_chain_goes_newest_incremental_first(self):
        self.chain()
        self.backups.append(backup(
            'full2', '2026-01-05T10:00:00',
            metadata=record('backup', 6, '2026-01-05T10:00:00+00:00')))
        plan = self.plan(last=1)
        self.assertEqual(['inc2', 'inc1', 'full'],
                         [u.id for u in plan.order])

    def test_foreign_dependent_holds(self):
        self.chain()
        self.backups.append(backup(
            'full2', '2026-01-05T10:00:00',
            metadata=record('backup', 6, '2026-01-05T10:00:00+00:00')))
        self.backups.append(backup(
            'hand-inc', '2026-01-04T10:00:00', incremental=True))
        plan = self.plan(last=1)
        reasons = self.table(plan)
        self.assertEqual(
            ('keep', ['base of hand-inc (not made by osc-backup)']),
            reasons['inc2'],
        )
        self.assertEqual('keep', reasons['full'][0])
        self.assertEqual([], plan.order)

    def test_cinder_dependents_unknown_hold(self):
        self.backups += [
            backup('full', '2026-01-01T10:00:00', dependents=True,
                   metadata=record('backup')),
            backup('new', '2026-01-05T10:00:00', metadata=record('backup')),
        ]
        reasons = self.table(self.plan(last=1))
        self.assertEqual('keep', reasons['full'][0])

    def test_incomplete_not_counted(self):
        self.backups += [
            backup('old', '2026-01-01T10:00:00', metadata=record('backup')),
            backup('new', '2026-01-02T10:00:00',
                   metadata=record('backup', 2,
                                   '2026-01-02T10:00:00+00:00')),
            backup('creating', '2026-01-03T10:00:00', status='creating',
                   metadata=record('backup', 2,
                                   '2026-01-03T10:00:00+00:00')),
        ]
        reasons = self.table(self.plan(last=1))
        self.assertEqual(('keep', ['incomplete (creating)']),
                         reasons['creating'])
        self.assertEqual(('keep', ['newest', 'last']), reasons['new'])
        self.assertEqual('delete', reasons['old'][0])

    def test_server_run_is_one_unit(self):
        for run, day in ((1, '01'), (2, '02')):
            created = f'2026-01-{day}T10:00:00+00:00'
            server = {'osc_backup_server_id': 'srv',
                      'osc_backup_server_name': 'web'}
            self.images.append(image_body(
                f'root{run}', 'r', f'2026-01-{day}T10:00:00Z',
                record('server-image', run, created, **server)))
            self.backups.append(backup(
                f'vol{run}', f'2026-01-{day}T10:01:00',
                metadata=record('backup', run, created, **server)))
        plan = self.plan(last=1)
        self.assertEqual({RUN[2]: ('keep', ['newest', 'last']),
                          RUN[1]: ('delete', [])}, self.table(plan))
        unit = plan.units[RUN[1]]
        self.assertEqual(('server-run', 'srv'), (unit.kind, unit.source_id))
        self.assertEqual({'root1', 'vol1'}, {p.id for p in unit.parts})

    def test_empty_policy(self):
        self.chain()
        self.assertRaises(retention.EmptyPolicy, self.plan)


class TestDelete(CloudCase):
    def setUp(self):
        super().setUp()
        self.chain()
        self.two_images()
        self.cat = self.load()

    def test_refuses_what_the_tool_did_not_make(self):
        exc = self.assertRaises(
            errors.InvalidInput, catalog.resolve_for_delete, self.cat,
            ['img2', 'user-image'],
        )
        self.assertIn("'user-image' is not a backup osc-backup made",
                      str(exc))

    def test_refuses_base_with_dependents(self):
        exc = self.assertRaises(
            errors.InvalidInput, catalog.resolve_for_delete, self.cat,
            ['full'],
        )
        self.assertIn('inc1, inc2', str(exc))
        self.assertIn('--with-dependents', str(exc))

    def test_with_dependents_newest_first(self):
        order = catalog.resolve_for_delete(self.cat, ['full'],
                                           with_dependents=True)
        self.assertEqual(['inc2', 'inc1', 'full'], [u.id for u in order])

    def test_by_name(self):
        order = catalog.resolve_for_delete(self.cat, ['data-backup-1'])
        self.assertEqual(['img1'], [u.id for u in order])

    def test_run(self):
        order = catalog.resolve_for_delete(self.cat, [], runs=[RUN[4]])
        self.assertEqual(['img1'], [u.id for u in order])
        self.assertRaises(errors.InvalidInput, catalog.resolve_for_delete,
                          self.cat, [], runs=[RUN[9]])

    def test_foreign_dependent_refused_even_with_dependents(self):
        self.backups.append(backup(
            'hand-inc', '2026-01-04T10:00:00', incremental=True))
        cat = self.load()
        exc = self.assertRaises(
            errors.InvalidInput, catalog.resolve_for_delete, cat,
            ['full'], with_dependents=True,
        )
        self.assertIn('hand-inc', str(exc))

    def test_delete_waits_and_continues_after_a_failure(self):
        order = catalog.resolve_for_delete(
            self.cat, ['full', 'img1'], with_dependents=True)
        self.assertEqual(['inc2', 'inc1', 'img1', 'full'],
                         [u.id for u in order])

        def delete_backup(backup_id, ignore_missing=True, force=False):
            if backup_id == 'inc1':
                raise sdk_exc.BadRequestException(
                    'Invalid backup', details='Incremental backups exist')

        self.bs.delete_backup.side_effect = delete_backup
        self.bs.wait_for_delete.return_value = None
        self.image_proxy.wait_for_delete.return_value = None
        outcomes = catalog.delete_units(self.conn, order, NullReporter())
        results = {o.unit.id: (o.failed, o.result) for o in outcomes}
        self.assertEqual((False, 'deleted'), results['inc2'])
        self.assertEqual((True, 'failed: inc1: Incremental backups exist'),
                         results['inc1'])
        self.assertEqual((False, 'deleted'), results['img1'])
        self.assertTrue(results['full'][0])
        self.assertIn('inc1', results['full'][1])
        # full was never tried; inc2 waited until gone
        self.assertEqual(
            ['inc2', 'inc1'],
            [c.args[0] for c in self.bs.delete_backup.call_args_list])
        self.image_proxy.delete_image.assert_called_once_with(
            'img1', ignore_missing=False)
        waited = self.bs.wait_for_delete.call_args_list
        self.assertEqual(['inc2'], [c.args[0].id for c in waited])
        self.assertEqual(1024**3, outcomes[0].freed)


def make_set(directory, name, record_=None, created='2026-01-01T00:00:00Z',
             image_id='img'):
    """A valid format-2 backup set, written by hand."""
    data = os.path.join(directory, name)
    with open(data, 'wb') as f:
        f.write(b'x' * 10)
    digest = hashlib.sha512(b'x' * 10).hexdigest()
    manifest = {
        'format': backup_set.FORMAT, 'format_version': 2,
        'tool': 'osc-backup', 'saved_at': created,
        'data': {'file': name, 'size': 10, 'hash_algo': 'sha512',
                 'hash_value': digest, 'checksum_file': name + '.sha512',
                 'verified_algo': 'sha512', 'verified_value': digest},
        'image': {'id': image_id, 'name': name, 'created_at': created},
        'glance_record': {},
        'backup': record_ or {},
        'source': {},
    }
    raw = json.dumps(manifest).encode()
    mpath = data + backup_set.MANIFEST_SUFFIX
    with open(mpath, 'wb') as f:
        f.write(raw)
    with open(data + '.sha512', 'w') as f:
        f.write(f'{digest}  {name}\n')
        f.write(f'{hashlib.sha512(raw).hexdigest()}  '
                f'{os.path.basename(mpath)}\n')
    return mpath


class TestLocal(base.TestCase):
    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(
            __import__('fixtures').TempDir()).path

    def test_lists_and_prunes_sets(self):
        make_set(self.dir, 'a.raw', record('image', 1), image_id='ia')
        make_set(self.dir, 'b.raw',
                 record('image', 2, '2026-01-02T00:00:00+00:00'),
                 image_id='ib')
        os.mkdir(os.path.join(self.dir, 'sub'))
        make_set(os.path.join(self.dir, 'sub'), 'c.raw', image_id='ic',
                 created='2026-01-03T00:00:00Z')
        cat = catalog.load_local(self.dir)
        self.assertEqual(['ic', 'ib', 'ia'], [r.id for r in cat.records])
        self.assertEqual('image', cat.records[0].kind)
        self.assertEqual(VOL, cat.records[1].source_id)
        plan = catalog.plan_prune(cat, cat.records,
                                  retention.Policy(last=1), now=NOW)
        self.assertEqual(['ia'], [u.id for u in plan.order])
        outcomes = catalog.delete_units(None, plan.order, NullReporter())
        self.assertEqual('deleted', outcomes[0].result)
        self.assertEqual(
            ['b.raw', 'b.raw.manifest.json', 'b.raw.sha512', 'sub'],
            sorted(os.listdir(self.dir)))

    def test_invalid_and_symlinked_sets_skipped(self):
        make_set(self.dir, 'a.raw', record('image'))
        with open(os.path.join(self.dir, 'a.raw'), 'ab') as f:
            f.write(b'')
        bad = os.path.join(self.dir, 'bad.raw.manifest.json')
        with open(bad, 'w') as f:
            f.write('{"format": "nope"}')
        outside = tempfile.mkdtemp()
        self.addCleanup(__import__('shutil').rmtree, outside)
        make_set(outside, 'o.raw', image_id='io')
        os.symlink(os.path.join(outside, 'o.raw.manifest.json'),
                   os.path.join(self.dir, 'o.raw.manifest.json'))
        os.symlink(outside, os.path.join(self.dir, 'linked'))
        cat = catalog.load_local(self.dir)
        self.assertEqual(['img'], [r.id for r in cat.records])
        self.assertEqual(1, len(cat.warnings))
        self.assertIn('bad.raw.manifest.json', cat.warnings[0])

    def test_not_a_directory(self):
        self.assertRaises(errors.InvalidInput, catalog.load_local,
                          os.path.join(self.dir, 'nope'))

    def test_remove_set_keeps_symlink_targets(self):
        outside = tempfile.mkdtemp()
        self.addCleanup(__import__('shutil').rmtree, outside)
        target = os.path.join(outside, 'precious')
        with open(target, 'w') as f:
            f.write('keep me')
        mpath = make_set(self.dir, 'a.raw')
        os.symlink(target, os.path.join(self.dir, 'a.raw.key'))
        found = backup_set.load_set(mpath)
        backup_set.remove_set(found)
        self.assertEqual([], os.listdir(self.dir))
        self.assertTrue(os.path.exists(target))


class TestResolveSource(CloudCase):
    def test_volume_server_and_text(self):
        self.bs.find_volume.return_value = fakes.volume(id='v-id')
        self.conn.compute.find_server.return_value = mock.Mock(id='s-id')
        self.assertEqual({'name', 'v-id', 's-id'},
                         catalog.resolve_source(self.conn, 'name'))
        self.bs.find_volume.assert_called_once_with(
            'name', ignore_missing=True)

    def test_deleted_source_is_the_text(self):
        self.bs.find_volume.return_value = None
        self.conn.compute.find_server.side_effect = (
            sdk_exc.EndpointNotFound('no compute'))
        self.assertEqual({'gone'}, catalog.resolve_source(self.conn, 'gone'))

    def test_ambiguous(self):
        self.bs.find_volume.side_effect = sdk_exc.DuplicateResource('two')
        self.assertRaises(errors.InvalidInput, catalog.resolve_source,
                          self.conn, 'data')
