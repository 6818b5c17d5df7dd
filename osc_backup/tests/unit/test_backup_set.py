"""Unit tests of osc_backup.common.backup_set: names, files, checksums."""

import hashlib
import os
import subprocess

import fixtures
import testtools

from osc_backup.common import backup_set
from osc_backup.common import errors


class TestNames(testtools.TestCase):
    def test_safe_name(self):
        for text, want in (('db data', 'db-data'), ('../..', 'x'),
                           ('.hidden', 'hidden'), ('a\nb', 'a-b'),
                           ('a..b', 'a.b'), ('/etc/passwd', 'etc-passwd'),
                           ('', 'x'), (None, 'None'), ('raw', 'raw')):
            self.assertEqual(want, backup_set.safe_name(text), text)
        self.assertEqual(80, len(backup_set.safe_name('y' * 200)))

    def test_hash_algorithm(self):
        self.assertEqual('sha512', backup_set.hash_algorithm('sha512'))
        self.assertEqual('sha512', backup_set.hash_algorithm('SHA512'))
        for bad in ('../sha512', 'sha512\n', 'whirlpool-9000', '', None, 5,
                    'x' * 40):
            self.assertIsNone(backup_set.hash_algorithm(bad), bad)

    def test_checksum_path_refuses_bad_algorithm(self):
        self.assertEqual('/d/f.sha512',
                         backup_set.checksum_path('/d/f', 'sha512'))
        self.assertRaises(ValueError, backup_set.checksum_path, '/d/f',
                          '../x')


class TestChecksumFile(testtools.TestCase):
    def test_lines_read_by_sha512sum_and_parsed_back(self):
        d = self.useFixture(fixtures.TempDir()).path
        names = ['plain.raw', 'new\nline.raw', 'back\\slash.raw',
                 'both\\n\n.raw', 'sp ace.raw']
        text = ''
        for i, name in enumerate(names):
            data = f'data {i}'.encode()
            with open(os.path.join(d, name), 'wb') as f:
                f.write(data)
            text += backup_set.checksum_line(
                hashlib.sha512(data).hexdigest(), name)
        self.assertEqual(len(names), len(text.splitlines()))
        with open(os.path.join(d, 'sums'), 'w') as f:
            f.write(text)
        p = subprocess.run(['sha512sum', '-c', 'sums'], cwd=d,
                           capture_output=True, text=True)
        self.assertEqual(0, p.returncode, p.stdout + p.stderr)
        parsed = backup_set.parse_checksum_file(text)
        self.assertEqual(sorted(names), sorted(parsed))

    def test_parse_accepts_binary_marker_refuses_garbage(self):
        self.assertEqual({'f': 'ab'},
                         backup_set.parse_checksum_file('AB *f\n'))
        self.assertRaises(ValueError, backup_set.parse_checksum_file,
                          'not a line\n')


class TestFiles(testtools.TestCase):
    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.victim = os.path.join(self.dir, 'victim')
        with open(self.victim, 'w') as f:
            f.write('precious')

    def path(self, name):
        return os.path.join(self.dir, name)

    def untouched(self):
        with open(self.victim) as f:
            self.assertEqual('precious', f.read())

    def test_create_file_never_follows_nor_opens_existing(self):
        os.symlink(self.victim, self.path('link'))
        self.assertRaises(FileExistsError, backup_set.create_file,
                          self.path('link'))
        self.assertRaises(FileExistsError, backup_set.create_file,
                          self.victim)
        self.untouched()

    def test_create_file_mode(self):
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        os.close(backup_set.create_file(self.path('new')))
        self.assertEqual(0o600, os.stat(self.path('new')).st_mode & 0o777)

    def test_open_existing_refuses_symlink_and_directory(self):
        os.symlink(self.victim, self.path('link'))
        e = self.assertRaises(errors.InvalidInput, backup_set.open_existing,
                              self.path('link'))
        self.assertIn('symbolic link', str(e))
        os.mkdir(self.path('dir'))
        self.assertRaises(errors.InvalidInput, backup_set.open_existing,
                          self.path('dir'))
        self.assertIsNone(backup_set.open_existing(self.path('none')))
        self.untouched()

    def test_publish_never_clobbers(self):
        for existing in ('file', 'link'):
            src = self.path('src')
            with open(src, 'w') as f:
                f.write('new')
            dst = self.path(existing)
            if existing == 'link':
                os.symlink(self.victim, dst)
            else:
                with open(dst, 'w') as f:
                    f.write('old')
            self.assertRaises(FileExistsError, backup_set.publish, src, dst)
            self.assertTrue(os.path.exists(src))
            os.unlink(src)
        self.untouched()
        with open(self.path('file')) as f:
            self.assertEqual('old', f.read())

    def test_publish_overwrite_replaces_the_link_itself(self):
        src, dst = self.path('src'), self.path('link')
        with open(src, 'w') as f:
            f.write('new')
        os.symlink(self.victim, dst)
        backup_set.publish(src, dst, overwrite=True)
        self.assertFalse(os.path.islink(dst))
        self.assertFalse(os.path.exists(src))
        self.untouched()

    def test_publish_without_hard_links(self):
        src, dst = self.path('src'), self.path('dst')
        with open(src, 'w') as f:
            f.write('new')
        with fixtures.MockPatchObject(
                os, 'link', side_effect=PermissionError(1, 'EPERM')):
            backup_set.publish(src, dst)
        with open(dst) as f:
            self.assertEqual('new', f.read())
        with open(src, 'w') as f:
            f.write('newer')
        with fixtures.MockPatchObject(
                os, 'link', side_effect=PermissionError(1, 'EPERM')):
            self.assertRaises(FileExistsError, backup_set.publish, src, dst)

    def test_write_atomic(self):
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        target = self.path('m.json')
        backup_set.write_atomic(target, b'one')
        self.assertEqual(0o600, os.stat(target).st_mode & 0o777)
        e = self.assertRaises(errors.InvalidInput, backup_set.write_atomic,
                              target, b'two')
        self.assertIn('exists', str(e))
        backup_set.write_atomic(target, b'two', overwrite=True)
        with open(target, 'rb') as f:
            self.assertEqual(b'two', f.read())
        os.symlink(self.victim, self.path('l.json'))
        self.assertRaises(errors.InvalidInput, backup_set.write_atomic,
                          self.path('l.json'), b'x')
        self.untouched()
        self.assertEqual(['l.json', 'm.json', 'victim'],
                         sorted(os.listdir(self.dir)))

    def test_make_dirs_0700(self):
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        deep = self.path('a/b/c')
        backup_set.make_dirs(deep)
        for d in ('a', 'a/b', 'a/b/c'):
            self.assertEqual(0o700, os.stat(self.path(d)).st_mode & 0o777)
        backup_set.make_dirs(deep)  # exists: fine
