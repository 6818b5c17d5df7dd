"""`backup list`, `show`, `prune` and `delete` against the minicloud: a
volume with a full and two incremental Cinder backups and two via-image
images, next to a user's own image and a hand-made Cinder backup with
look-alike names that must survive everything.

Other tests share the project: every list and prune here is limited to
this test's volume (--source), and only what this test made is deleted.
"""

from osc_backup.tests.functional import base

MV = ['--os-volume-api-version', '3.43']


class TestCatalog(base.FunctionalTestCase):
    def backup(self, volume, *args):
        out = self.openstack(['backup', 'volume', 'create', volume, *args],
                             parse_output=True)
        if out.get('backup_id'):
            self.addCleanup(self._delete_simple, 'volume backup',
                            out['backup_id'], base.MEMBER_CLOUD)
        if out.get('image_id'):
            self.addCleanup(self._delete_simple, 'image', out['image_id'],
                            base.MEMBER_CLOUD)
        self.assertIn(out['status'], ('available', 'active'))
        return out

    def hand_made_backup(self, volume, name):
        out = self.openstack(['volume', 'backup', 'create', '--name', name,
                              volume], parse_output=True)
        self.addCleanup(self._delete_simple, 'volume backup', out['id'],
                        base.MEMBER_CLOUD)
        self.wait_for_status('volume backup', out['id'], 'available')
        self.wait_for_status('volume', volume, 'available')
        return out['id']

    def listed(self, volume):
        rows = self.openstack(['backup', 'list', '--source', volume],
                              parse_output=True)
        return {r['ID']: r for r in rows}

    def exists(self, resource, ident):
        p = self.run_cli([*resource.split(), 'show', ident], quiet=True)
        return p.returncode == 0

    def test_list_prune_delete(self):
        vol = self.create_volume(1)
        vid = vol['id']
        self.write_random(vid, mib=2, offset_mib=1)
        full = self.backup(vid, '--via-backup')['backup_id']
        self.write_random(vid, mib=1, offset_mib=10)
        inc1 = self.backup(vid, '--via-backup', '--incremental')
        self.assertTrue(inc1['is_incremental'])
        inc1 = inc1['backup_id']
        self.write_random(vid, mib=1, offset_mib=20)
        inc2 = self.backup(vid, '--via-backup', '--incremental')['backup_id']
        img1 = self.backup(vid, '--via-image')
        img2 = self.backup(vid, '--via-image')['image_id']
        img1 = img1['image_id']
        # the parent is recorded when the incremental is made
        for child, parent in ((inc1, full), (inc2, inc1)):
            md = self.openstack([*MV, 'volume', 'backup', 'show', child],
                                parse_output=True)['metadata']
            self.assertEqual(parent, md['osc_backup_parent_backup_id'])
        # look-alikes: a user's image and a hand-made backup, named like
        # the tool names its backups
        lookalike = f'{vol["name"]}-backup-20260101T000000Z-abcdef'
        user_image = self.create_image_from_volume(
            vid, name=lookalike)['id']
        hand = self.hand_made_backup(vid, lookalike)

        # list: only what the tool made, with its chain
        rows = self.listed(vid)
        self.assertEqual({full, inc1, inc2, img1, img2}, set(rows))
        self.assertEqual('volume-backup', rows[inc2]['Kind'])
        self.assertEqual('volume-image', rows[img1]['Kind'])
        self.assertEqual(inc1, rows[inc2]['Depends On'])
        self.assertEqual(full, rows[inc1]['Depends On'])
        self.assertIsNone(rows[full]['Depends On'])
        self.assertEqual(vid, rows[img2]['Source'])
        self.assertEqual(vol['name'], rows[img2]['Source Name'])

        info = self.openstack(['backup', 'show', inc2], parse_output=True)
        self.assertEqual(inc1, info['depends_on'])
        self.assertEqual('recorded', info['chain'])
        info = self.openstack(['backup', 'show', full], parse_output=True)
        self.assertEqual([inc1], info['dependents'])
        for foreign in (user_image, hand):
            p = self.run_cli(['backup', 'show', foreign])
            self.assertEqual(1, p.returncode)
            self.assertIn('is not a backup osc-backup made', p.stderr)

        # no rule: refused, exit 2
        p = self.run_cli(['backup', 'prune', '--source', vid])
        self.assertEqual(2, p.returncode)
        self.assertIn('no retention rule given', p.stderr)

        # dry run: changes nothing; the full and the first incremental
        # are kept as bases of the second
        p = self.run_cli(['backup', 'prune', '--source', vid,
                          '--keep-last', '1', '--dry-run', '-f', 'json'])
        self.assertEqual(0, p.returncode, p.stderr)
        self.assertIn('would delete 1', p.stderr)
        dry = {r['ID']: r for r in base.json.loads(p.stdout)}
        self.assertEqual({full, inc1, inc2, img1, img2}, set(dry))
        self.assertEqual(['newest', 'last'], dry[inc2]['Reasons'])
        self.assertEqual([f'base of {inc2}'], dry[inc1]['Reasons'])
        self.assertEqual([f'base of {inc1}'], dry[full]['Reasons'])
        self.assertEqual('keep', dry[img2]['Action'])
        self.assertEqual('delete', dry[img1]['Action'])
        self.assertEqual({full, inc1, inc2, img1, img2},
                         set(self.listed(vid)))

        # the real run deletes exactly what the dry run said
        out = self.openstack(['backup', 'prune', '--source', vid,
                              '--keep-last', '1'], parse_output=True)
        real = {r['ID']: r for r in out}
        self.assertEqual({i: r['Action'] for i, r in dry.items()},
                         {i: r['Action'] for i, r in real.items()})
        self.assertEqual('deleted', real[img1]['Result'])
        self.assertFalse(self.exists('image', img1))
        self.assertEqual({full, inc1, inc2, img2}, set(self.listed(vid)))

        # a base without --with-dependents: refused, nothing deleted
        p = self.run_cli(['backup', 'delete', full])
        self.assertEqual(1, p.returncode)
        self.assertIn(inc1, p.stderr)
        self.assertIn('--with-dependents', p.stderr)
        self.assertEqual({full, inc1, inc2, img2}, set(self.listed(vid)))
        # something the tool did not make: refused
        p = self.run_cli(['backup', 'delete', hand])
        self.assertEqual(1, p.returncode)
        self.assertIn('is not a backup osc-backup made', p.stderr)

        # with dependents: newest first, waited until gone
        out = self.openstack(['backup', 'delete', '--with-dependents', full],
                             parse_output=True)
        self.assertEqual([inc2, inc1, full], [r['ID'] for r in out])
        self.assertEqual({'deleted'}, {r['Result'] for r in out})
        for backup_id in (full, inc1, inc2):
            self.assertFalse(self.exists('volume backup', backup_id))
        self.assertEqual({img2}, set(self.listed(vid)))

        # the newest of a group always stays, whatever the rule
        out = self.openstack(['backup', 'prune', '--source', vid,
                              '--keep-within', '1h'], parse_output=True)
        self.assertEqual([(img2, 'keep')],
                         [(r['ID'], r['Action']) for r in out])
        # the look-alikes survived everything
        self.assertTrue(self.exists('image', user_image))
        self.assertTrue(self.exists('volume backup', hand))
