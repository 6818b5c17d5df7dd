"""Unit tests of image save and restore, the transfer and the set format.

HTTP is mocked with requests-mock behind a tiny fake image proxy that
behaves like openstacksdk's (relative URLs, ``raise_exc``); no sleeps.
"""

import hashlib
import io
import json
import os
import subprocess
from unittest import mock

import fixtures
import requests
import requests_mock
import testtools
from openstack import exceptions as sdk_exc

from osc_backup.common import backup_set
from osc_backup.common import errors
from osc_backup.common import tags
from osc_backup.common import transfer
from osc_backup.procedures import image_restore
from osc_backup.procedures import image_save

ENDPOINT = 'http://glance.test/v2'
IMAGE_ID = '3f2a9c1b-7d4e-4f6a-9b1c-0123456789ab'
DATA = os.urandom(100_000 + 123)


def record(data=DATA, **over):
    rec = {
        'id': IMAGE_ID,
        'name': 'db data backup',
        'status': 'active',
        'size': len(data),
        'virtual_size': None,
        'disk_format': 'raw',
        'container_format': 'bare',
        'min_disk': 1,
        'min_ram': 0,
        'checksum': hashlib.md5(data).hexdigest(),
        'os_hash_algo': 'sha512',
        'os_hash_value': hashlib.sha512(data).hexdigest(),
        'visibility': 'private',
        'protected': False,
        'tags': ['nightly'],
        'owner': 'p1',
        'created_at': '2024-01-01T00:00:00Z',
        'updated_at': '2024-01-01T00:00:00Z',
        'file': f'/v2/images/{IMAGE_ID}/file',
        'self': f'/v2/images/{IMAGE_ID}',
        'schema': '/v2/schemas/image',
        'stores': 'fs',
        'os_glance_import_task': 'x',
        'osc_backup_tool': 'osc-backup',
        'osc_backup_source_volume_id': 'v-1',
        'hw_disk_bus': 'scsi',
    }
    rec.update(over)
    return rec


def rewrite_manifest(saved, manifest):
    """Change a saved set's manifest and its line in the checksum file
    (what a careful forger would do)."""
    blob = json.dumps(manifest).encode()
    with open(saved.manifest, 'wb') as f:
        f.write(blob)
    with open(saved.checksum_file) as f:
        lines = f.read().splitlines()
    name = os.path.basename(saved.manifest)
    algo = saved.checksum_file.rsplit('.', 1)[1]
    lines = [f'{hashlib.new(algo, blob).hexdigest()}  {name}'
             if line.endswith('  ' + name) else line for line in lines]
    with open(saved.checksum_file, 'w') as f:
        f.write('\n'.join(lines) + '\n')


class FakeImageProxy:
    """What save_image uses of ``conn.image``: get/post/put + find."""

    def __init__(self):
        self.session = requests.Session()
        self.find_image = mock.Mock()
        self.find_image.return_value = mock.Mock(id=IMAGE_ID)

    def _call(self, method, url, **kwargs):
        kwargs.pop('raise_exc', None)
        return self.session.request(method, ENDPOINT + url, **kwargs)

    def get(self, url, **kwargs):
        return self._call('GET', url, **kwargs)

    def post(self, url, **kwargs):
        return self._call('POST', url, **kwargs)

    def put(self, url, **kwargs):
        return self._call('PUT', url, **kwargs)


class FakeConn:
    def __init__(self):
        self.image = FakeImageProxy()
        self.config = mock.Mock(region_name='RegionOne')
        self.config.name = 'minicloud'
        self.config.auth = {'auth_url': 'http://127.0.0.1:5000/v3'}
        self.current_project_id = 'p1'


class Flaky(io.RawIOBase):
    """A body that fails with ``exc`` after ``fail_after`` bytes."""

    def __init__(self, data, fail_after, exc=None):
        self._data = memoryview(data)
        self._pos = 0
        self._fail_after = fail_after
        self._exc = exc or ConnectionResetError(104, 'Connection reset')

    def readable(self):
        return True

    def readinto(self, b):
        if self._pos >= self._fail_after:
            raise self._exc
        n = min(len(b), len(self._data) - self._pos,
                self._fail_after - self._pos)
        b[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n


def small_options(**over):
    sleeps = []
    opts = dict(buffer_size=8192, buffers=3, flush_window=16384,
                sleep=sleeps.append)
    opts.update(over)
    return transfer.TransferOptions(**opts), sleeps


class DownloadTestCase(testtools.TestCase):
    #: what the image's record has besides ``record()``'s
    RECORD: dict = {}

    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.conn = FakeConn()
        self.setup_conn()
        self.mock = self.useFixture(
            fixtures.MockPatchObject(self.conn.image, 'session'))
        self.conn.image.session = requests.Session()
        self.adapter = requests_mock.Adapter()
        self.conn.image.session.mount('http://', self.adapter)
        self.rec = record(**self.RECORD)
        self.adapter.register_uri(
            'GET', f'{ENDPOINT}/images/{IMAGE_ID}', json=self.rec)
        self.file_url = f'{ENDPOINT}/images/{IMAGE_ID}/file'
        self.final = os.path.join(self.dir, 'img.raw')
        self.partial = os.path.join(self.dir, '.img.raw.partial')
        self.part = os.path.join(self.partial, 'img.raw.part')
        self.state = os.path.join(self.partial, 'state.json')

    def setup_conn(self):
        """Add to ``self.conn`` before anything is saved."""

    def serve(self, *responses):
        self.adapter.register_uri('GET', self.file_url, list(responses))

    def ranged(self, data, start):
        return {
            'status_code': 206,
            'body': io.BytesIO(data[start:]),
            'headers': {
                'Content-Range': f'bytes {start}-{len(data) - 1}/{len(data)}',
                'Content-Length': str(len(data) - start),
            },
        }

    def whole(self, data=DATA):
        return {'status_code': 200, 'body': io.BytesIO(data),
                'headers': {'Content-Length': str(len(data))}}

    def save(self, target=None, **kwargs):
        opts = kwargs.pop('options', None) or small_options()[0]
        kwargs.setdefault('as_file', True)
        return image_save.save_image(
            self.conn, IMAGE_ID, target or self.final, options=opts,
            **kwargs)

    def file_requests(self):
        return [r for r in self.adapter.request_history
                if r.url.endswith('/file')]

    def write_partial(self, data, state=None):
        os.makedirs(self.partial, 0o700, exist_ok=True)
        with open(self.part, 'wb') as f:
            f.write(data)
        with open(self.state, 'w') as f:
            json.dump(state or image_save._state(self.rec), f)

    def listing(self):
        return sorted(os.listdir(self.dir))


class TestExpectedHash(testtools.TestCase):
    def test_os_hash_preferred(self):
        exp = image_save.expected_hash(record())
        self.assertEqual('sha512', exp.algorithm)
        self.assertEqual(hashlib.sha512(DATA).hexdigest(), exp.value)
        self.assertEqual(len(DATA), exp.size)

    def test_md5_fallback(self):
        exp = image_save.expected_hash(
            record(os_hash_algo=None, os_hash_value=None))
        self.assertEqual(('md5', hashlib.md5(DATA).hexdigest()),
                         (exp.algorithm, exp.value))

    def test_unknown_algorithm_falls_back_to_md5(self):
        exp = image_save.expected_hash(record(os_hash_algo='whirlpool-9000'))
        self.assertEqual('md5', exp.algorithm)

    def test_no_hash_refused(self):
        rec = record(os_hash_algo=None, os_hash_value=None, checksum=None)
        e = self.assertRaises(errors.InvalidInput, image_save.expected_hash,
                              rec)
        self.assertIn('--allow-unverified', str(e))
        exp = image_save.expected_hash(rec, allow_unverified=True)
        self.assertIsNone(exp.algorithm)


class TestSave(DownloadTestCase):
    def test_save_verifies_and_writes_set(self):
        self.serve(self.whole())
        saved = self.save()
        with open(self.final, 'rb') as f:
            self.assertEqual(DATA, f.read())
        self.assertEqual('sha512', saved.hash_algo)
        self.assertEqual(hashlib.sha512(DATA).hexdigest(), saved.hash_value)
        self.assertTrue(saved.verified)
        self.assertEqual(len(DATA), saved.size)
        self.assertEqual(0, saved.resumed_from)
        self.assertEqual(0, saved.retries)
        self.assertEqual(
            ['img.raw', 'img.raw.manifest.json', 'img.raw.sha512'],
            self.listing())
        self.assertEqual(
            [self.final, self.final + '.manifest.json',
             self.final + '.sha512'], saved.files)
        # one GET without Range
        reqs = self.file_requests()
        self.assertEqual(1, len(reqs))
        self.assertNotIn('Range', reqs[0].headers)

    def test_manifest_contents(self):
        self.serve(self.whole())
        saved = self.save()
        with open(saved.manifest) as f:
            m = json.load(f)
        self.assertEqual('osc-backup-image-set', m['format'])
        self.assertEqual(IMAGE_ID, m['image']['id'])
        self.assertEqual('db data backup', m['image']['name'])
        self.assertEqual('raw', m['image']['disk_format'])
        self.assertEqual('bare', m['image']['container_format'])
        self.assertEqual(1, m['image']['min_disk'])
        self.assertEqual(0, m['image']['min_ram'])
        self.assertEqual(self.rec, m['glance_record'])
        self.assertEqual({'osc_backup_tool': 'osc-backup',
                          'osc_backup_source_volume_id': 'v-1'},
                         m['backup'])
        self.assertEqual('img.raw', m['data']['file'])
        self.assertEqual(2, m['format_version'])
        self.assertEqual(hashlib.sha512(DATA).hexdigest(),
                         m['data']['hash_value'])
        self.assertEqual('sha512', m['data']['hash_algo'])
        self.assertEqual('img.raw.sha512', m['data']['checksum_file'])
        self.assertNotIn('sha256', m['data'])
        self.assertEqual('sha512', m['data']['verified_algo'])
        self.assertEqual({'cloud': 'minicloud', 'region': 'RegionOne',
                          'project_id': 'p1',
                          'auth_url': 'http://127.0.0.1:5000/v3'},
                         m['source'])
        self.assertIn('tool_version', m)
        self.assertTrue(m['saved_at'].endswith('Z'))

    def test_checksum_file_accepted_by_sha512sum(self):
        self.serve(self.whole())
        saved = self.save()
        with open(saved.checksum_file) as f:
            lines = f.read().splitlines()
        self.assertEqual(
            f'{hashlib.sha512(DATA).hexdigest()}  img.raw', lines[0])
        self.assertTrue(lines[1].endswith('  img.raw.manifest.json'))
        p = subprocess.run(['sha512sum', '-c', 'img.raw.sha512'],
                           cwd=self.dir, capture_output=True, text=True)
        self.assertEqual(0, p.returncode, p.stdout + p.stderr)

    def test_directory_target_names_file_after_image(self):
        self.serve(self.whole())
        saved = image_save.save_image(
            self.conn, IMAGE_ID, self.dir, options=small_options()[0])
        self.assertEqual(
            os.path.join(self.dir, 'db-data-backup-3f2a9c1b.raw'),
            saved.file)

    def test_directory_created(self):
        self.serve(self.whole())
        target = os.path.join(self.dir, 'new', 'sub')
        saved = image_save.save_image(
            self.conn, IMAGE_ID, target, as_file=False,
            options=small_options()[0])
        self.assertEqual(target, os.path.dirname(saved.file))

    def test_image_object_accepted(self):
        self.serve(self.whole())
        image = mock.Mock(id=IMAGE_ID)
        image_save.save_image(self.conn, image, self.final,
                            options=small_options()[0])
        self.conn.image.find_image.assert_not_called()

    def test_name_resolved(self):
        self.serve(self.whole())
        image_save.save_image(self.conn, 'db', self.final,
                            options=small_options()[0])
        self.conn.image.find_image.assert_called_once_with(
            'db', ignore_missing=False)

    def test_id_costs_one_request(self):
        # an ID is read directly: no openstacksdk find, one GET of the record
        self.serve(self.whole())
        self.save()
        self.conn.image.find_image.assert_not_called()
        record_gets = [r for r in self.adapter.request_history
                       if r.url == f'{ENDPOINT}/images/{IMAGE_ID}']
        self.assertEqual(1, len(record_gets))

    def test_id_shaped_name_falls_back_to_find(self):
        # no image has that ID: it is looked up as a name, like the SDK does
        other = IMAGE_ID.replace('3f2a', '0000')
        self.adapter.register_uri(
            'GET', f'{ENDPOINT}/images/{other}', status_code=404)
        self.serve(self.whole())
        saved = image_save.save_image(self.conn, other, self.final,
                                    options=small_options()[0])
        self.conn.image.find_image.assert_called_once_with(
            other, ignore_missing=False)
        self.assertEqual(IMAGE_ID, saved.image_id)

    def test_record_error_not_hidden(self):
        self.adapter.register_uri(
            'GET', f'{ENDPOINT}/images/{IMAGE_ID}', status_code=500)
        e = self.assertRaises(errors.BackupError, self.save)
        self.assertIn('HTTP 500', str(e))
        self.conn.image.find_image.assert_not_called()

    def test_not_found_and_duplicate(self):
        self.adapter.register_uri(
            'GET', f'{ENDPOINT}/images/{IMAGE_ID}', status_code=404)
        self.conn.image.find_image.side_effect = sdk_exc.NotFoundException()
        e = self.assertRaises(errors.InvalidInput, self.save)
        self.assertEqual("No image with name or ID '%s' found." % IMAGE_ID,
                         str(e))
        self.conn.image.find_image.side_effect = (
            sdk_exc.DuplicateResource())
        e = self.assertRaises(errors.InvalidInput, self.save)
        self.assertIn('More than one image', str(e))

    def test_not_active_refused(self):
        for status, words in (('queued', 'has no data yet'),
                              ('deactivated', 'administrator reactivates'),
                              ('saving', 'still being uploaded')):
            self.adapter.register_uri(
                'GET', f'{ENDPOINT}/images/{IMAGE_ID}',
                json=record(status=status))
            e = self.assertRaises(errors.InvalidInput, self.save)
            self.assertIn(f"is '{status}'", str(e))
            self.assertIn(words, str(e))
        self.assertEqual([], self.file_requests())
        self.assertEqual([], self.listing())

    def test_refuses_to_overwrite(self):
        with open(self.final, 'w') as f:
            f.write('old')
        self.serve(self.whole())
        e = self.assertRaises(errors.InvalidInput, self.save)
        self.assertIn('--overwrite', str(e))
        self.assertEqual([], self.file_requests())
        with open(self.final) as f:
            self.assertEqual('old', f.read())

    def test_refuses_when_only_manifest_exists(self):
        with open(self.final + '.manifest.json', 'w') as f:
            f.write('{}')
        self.serve(self.whole())
        self.assertRaises(errors.InvalidInput, self.save)

    def test_overwrite(self):
        with open(self.final, 'w') as f:
            f.write('old')
        self.serve(self.whole())
        self.save(overwrite=True)
        with open(self.final, 'rb') as f:
            self.assertEqual(DATA, f.read())

    def test_md5_only_image(self):
        self.rec = record(os_hash_algo=None, os_hash_value=None)
        self.adapter.register_uri(
            'GET', f'{ENDPOINT}/images/{IMAGE_ID}', json=self.rec)
        self.serve(self.whole())
        saved = self.save()
        self.assertEqual(('md5', hashlib.md5(DATA).hexdigest()),
                         (saved.hash_algo, saved.hash_value))
        self.assertEqual(self.final + '.md5', saved.checksum_file)
        p = subprocess.run(['md5sum', '-c', 'img.raw.md5'],
                           cwd=self.dir, capture_output=True, text=True)
        self.assertEqual(0, p.returncode, p.stdout + p.stderr)

    def test_sha256_image_gets_a_sha256_file(self):
        self.rec = record(os_hash_algo='sha256',
                          os_hash_value=hashlib.sha256(DATA).hexdigest())
        self.adapter.register_uri(
            'GET', f'{ENDPOINT}/images/{IMAGE_ID}', json=self.rec)
        self.serve(self.whole())
        saved = self.save()
        self.assertEqual('sha256', saved.hash_algo)
        self.assertEqual(self.final + '.sha256', saved.checksum_file)
        p = subprocess.run(['sha256sum', '-c', 'img.raw.sha256'],
                           cwd=self.dir, capture_output=True, text=True)
        self.assertEqual(0, p.returncode, p.stdout + p.stderr)

    def test_final_name_absent_while_downloading(self):
        seen = []

        def body(request, context):
            seen.append((os.path.exists(self.final),
                         os.path.exists(self.part),
                         os.path.exists(self.state)))
            return DATA

        self.adapter.register_uri('GET', self.file_url, content=body)
        self.save()
        self.assertEqual([(False, True, True)], seen)
        self.assertTrue(os.path.exists(self.final))
        self.assertFalse(os.path.exists(self.part))
        self.assertFalse(os.path.exists(self.state))

    def test_fsync_before_rename(self):
        calls = []
        real_fsync, real_link = os.fsync, os.link

        def fsync(fd):
            calls.append(('fsync', os.path.basename(
                os.readlink(f'/proc/self/fd/{fd}'))))
            return real_fsync(fd)

        def link(a, b, **kwargs):
            calls.append(('link', a, os.path.basename(b)))
            return real_link(a, b, **kwargs)

        self.serve(self.whole())
        with mock.patch.object(os, 'fsync', fsync), \
                mock.patch.object(os, 'link', link):
            self.save()
        first_link = calls.index(('link', 'img.raw.part', 'img.raw'))
        before = calls[:first_link]
        # every file of the set, then the partial directory, is on disk
        # before anything is renamed into place; the checksum file last
        for name in ('img.raw.part', 'img.raw.manifest.json',
                     'img.raw.sha512', '.img.raw.partial'):
            self.assertIn(('fsync', name), before)
        links = [c[2] for c in calls if c[0] == 'link']
        self.assertEqual(['img.raw', 'img.raw.manifest.json',
                          'img.raw.sha512'], links)

    def test_fallback_reader_for_encoded_body(self):
        resp = mock.Mock()
        resp.headers = {'Content-Encoding': 'gzip'}
        resp.raw.read.side_effect = [b'abc', b'']
        read = transfer._reader(resp)
        buf = memoryview(bytearray(8))
        self.assertEqual(3, transfer._fill(read, buf))
        self.assertEqual(b'abc', bytes(buf[:3]))

    def test_progress_bar_on_a_terminal(self):
        from osc_backup.common.progress import Reporter
        self.serve(self.whole())
        stream = io.StringIO()
        self.save(reporter=Reporter(stream=stream, progress=True))
        self.assertIn('db data backup', stream.getvalue())
        self.assertIn('B/s', stream.getvalue())

    def test_silent_when_not_a_terminal(self):
        from osc_backup.common.progress import Reporter
        self.serve(self.whole())
        stream = io.StringIO()
        self.save(reporter=Reporter(stream=stream, progress=False))
        self.assertEqual('', stream.getvalue())

    def test_big_buffers(self):
        # default options: one buffer holds the whole body
        self.serve(self.whole())
        image_save.save_image(self.conn, IMAGE_ID, self.final,
                            options=transfer.TransferOptions())
        with open(self.final, 'rb') as f:
            self.assertEqual(DATA, f.read())


class TestMismatch(DownloadTestCase):
    def setUp(self):
        super().setUp()
        bad = bytearray(DATA)
        bad[5000] ^= 0xFF
        self.bad = bytes(bad)

    def test_mismatch_removes_everything(self):
        self.serve(self.whole(self.bad))
        e = self.assertRaises(image_save.HashMismatch, self.save)
        self.assertIn('did not verify', str(e))
        self.assertIn(hashlib.sha512(DATA).hexdigest(), str(e))
        self.assertIn(hashlib.sha512(self.bad).hexdigest(), str(e))
        self.assertEqual([], self.listing())

    def test_mismatch_keep_partial(self):
        self.serve(self.whole(self.bad))
        self.assertRaises(image_save.HashMismatch, self.save,
                          keep_partial=True)
        self.assertEqual(['img.raw.unverified'], self.listing())
        with open(self.final + '.unverified', 'rb') as f:
            self.assertEqual(self.bad, f.read())

    def test_too_much_data(self):
        self.serve(self.whole(DATA + b'extra'))
        e = self.assertRaises(image_save.HashMismatch, self.save)
        self.assertIn('more than the', str(e))
        self.assertEqual([], self.listing())

    def test_existing_final_untouched_on_mismatch(self):
        with open(self.final, 'w') as f:
            f.write('previous good backup')
        self.serve(self.whole(self.bad))
        self.assertRaises(image_save.HashMismatch, self.save, overwrite=True)
        with open(self.final) as f:
            self.assertEqual('previous good backup', f.read())


class TestResume(DownloadTestCase):
    def test_resume_uses_range(self):
        start = 28_672  # a multiple of 4096
        self.write_partial(DATA[:start])
        self.serve(self.ranged(DATA, start))
        saved = self.save()
        reqs = self.file_requests()
        self.assertEqual(1, len(reqs))
        self.assertEqual(f'bytes={start}-', reqs[0].headers['Range'])
        self.assertEqual(start, saved.resumed_from)
        with open(self.final, 'rb') as f:
            self.assertEqual(DATA, f.read())
        self.assertEqual(['img.raw', 'img.raw.manifest.json',
                          'img.raw.sha512'], self.listing())

    def test_resume_at_buffer_boundaries(self):
        for start in (4096, 8192, 12288, 98304):
            for p in self.listing():
                os.unlink(os.path.join(self.dir, p))
            self.write_partial(DATA[:start])
            self.serve(self.ranged(DATA, start))
            saved = self.save()
            self.assertEqual(start, saved.resumed_from)
            self.assertEqual(hashlib.sha512(DATA).hexdigest(), saved.hash_value)

    def test_resume_aligned_down_to_block(self):
        for start, aligned in ((1, 0), (8191, 4096), (8193, 8192),
                               (len(DATA) - 1, 98304)):
            for p in self.listing():
                os.unlink(os.path.join(self.dir, p))
            self.write_partial(DATA[:start])
            self.serve(self.ranged(DATA, aligned) if aligned
                       else self.whole())
            saved = self.save()
            self.assertEqual(aligned, saved.resumed_from)
            with open(self.final, 'rb') as f:
                self.assertEqual(DATA, f.read())

    def test_without_o_direct(self):
        self.serve(self.whole())
        with mock.patch.object(transfer, '_open_direct', return_value=None):
            saved = self.save()
        self.assertEqual(hashlib.sha512(DATA).hexdigest(), saved.hash_value)
        with open(self.final, 'rb') as f:
            self.assertEqual(DATA, f.read())

    def test_o_direct_refused_at_write_falls_back(self):
        real = os.pwrite
        direct = []

        def pwrite(fd, view, offset):
            if os.readlink(f'/proc/self/fd/{fd}') and fd not in direct:
                flags = __import__('fcntl').fcntl(fd, 1 + 2)  # F_GETFL
                if flags & getattr(os, 'O_DIRECT', 0):
                    direct.append(fd)
                    raise OSError(22, 'Invalid argument')
            return real(fd, view, offset)

        self.serve(self.whole())
        with mock.patch.object(os, 'pwrite', pwrite):
            self.save()
        self.assertEqual(1, len(direct))
        with open(self.final, 'rb') as f:
            self.assertEqual(DATA, f.read())

    def test_complete_partial_needs_no_request(self):
        self.write_partial(DATA)
        self.serve(self.whole())
        saved = self.save()
        self.assertEqual([], self.file_requests())
        self.assertEqual(len(DATA), saved.resumed_from)

    def test_other_image_partial_discarded(self):
        state = image_save._state(self.rec)
        state['os_hash_value'] = 'f' * 128
        self.write_partial(b'x' * 40_000, state=state)
        self.serve(self.whole())
        saved = self.save()
        self.assertNotIn('Range', self.file_requests()[0].headers)
        self.assertEqual(0, saved.resumed_from)
        with open(self.final, 'rb') as f:
            self.assertEqual(DATA, f.read())

    def test_partial_without_state_discarded(self):
        os.mkdir(self.partial, 0o700)
        with open(self.part, 'wb') as f:
            f.write(b'x' * 50)
        self.serve(self.whole())
        self.save()
        self.assertNotIn('Range', self.file_requests()[0].headers)

    def test_no_resume_option(self):
        self.write_partial(DATA[:20_000])
        self.serve(self.whole())
        saved = self.save(resume=False)
        self.assertNotIn('Range', self.file_requests()[0].headers)
        self.assertEqual(0, saved.resumed_from)

    def test_longer_partial_discarded(self):
        self.write_partial(DATA + b'more')
        self.serve(self.whole())
        saved = self.save()
        self.assertEqual(0, saved.resumed_from)

    def test_200_instead_of_206_restarts_cleanly(self):
        self.write_partial(DATA[:32_768])
        self.serve(self.whole())
        saved = self.save()
        reqs = self.file_requests()
        self.assertEqual(1, len(reqs))
        self.assertEqual('bytes=32768-', reqs[0].headers['Range'])
        with open(self.final, 'rb') as f:
            self.assertEqual(DATA, f.read())
        self.assertEqual(hashlib.sha512(DATA).hexdigest(), saved.hash_value)

    def test_wrong_content_range_restarts(self):
        self.write_partial(DATA[:30_000])
        bad = self.ranged(DATA, 20_000)  # the server starts elsewhere
        self.serve(bad, self.whole())
        self.save()
        reqs = self.file_requests()
        self.assertEqual(2, len(reqs))
        self.assertNotIn('Range', reqs[1].headers)
        with open(self.final, 'rb') as f:
            self.assertEqual(DATA, f.read())

    def test_416_restarts(self):
        self.write_partial(DATA[:30_000])
        self.serve({'status_code': 416}, self.whole())
        self.save()
        self.assertNotIn('Range', self.file_requests()[1].headers)

    def test_corrupt_partial_redownloaded_once(self):
        start = 28_672
        bad = bytearray(DATA[:start])
        bad[10] ^= 1
        self.write_partial(bytes(bad))
        self.serve(self.ranged(DATA, start), self.whole())
        saved = self.save()
        reqs = self.file_requests()
        self.assertEqual(2, len(reqs))
        self.assertEqual(f'bytes={start}-', reqs[0].headers['Range'])
        self.assertNotIn('Range', reqs[1].headers)
        self.assertEqual(0, saved.resumed_from)
        with open(self.final, 'rb') as f:
            self.assertEqual(DATA, f.read())

    def test_locked_partial_refused(self):
        import fcntl
        self.write_partial(DATA[:8192])
        fd = os.open(self.partial, os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        e = self.assertRaises(errors.InvalidInput, self.save)
        self.assertIn('Another osc-backup is writing', str(e))
        self.assertEqual(8192, os.path.getsize(self.part))


class TestRetries(DownloadTestCase):
    def test_reset_mid_body_resumes_with_range(self):
        cut = 3 * 8192 + 100
        self.serve({'status_code': 200, 'body': Flaky(DATA, cut),
                    'headers': {'Content-Length': str(len(DATA))}},
                   self.ranged(DATA, 3 * 8192))
        opts, sleeps = small_options()
        saved = self.save(options=opts)
        reqs = self.file_requests()
        # the partly filled buffer is dropped: resume at its start
        self.assertEqual('bytes=24576-', reqs[1].headers['Range'])
        self.assertEqual([1.0], sleeps)
        self.assertEqual(1, saved.retries)
        self.assertEqual(0, saved.resumed_from)
        with open(self.final, 'rb') as f:
            self.assertEqual(DATA, f.read())

    def test_short_body_retried(self):
        self.serve({'status_code': 200, 'body': io.BytesIO(DATA[:50_000]),
                    'headers': {}},
                   self.ranged(DATA, 50_000))
        opts, sleeps = small_options()
        self.save(options=opts)
        self.assertEqual('bytes=50000-', self.file_requests()[1].headers[
            'Range'])
        self.assertEqual([1.0], sleeps)

    def test_5xx_retried_with_backoff(self):
        self.serve({'status_code': 503}, {'status_code': 502},
                   {'status_code': 500}, self.whole())
        opts, sleeps = small_options()
        saved = self.save(options=opts)
        self.assertEqual([1.0, 2.0, 4.0], sleeps)
        self.assertEqual(3, saved.retries)

    def test_backoff_capped(self):
        self.serve(*([{'status_code': 503}] * 6), self.whole())
        opts, sleeps = small_options(retries=6, backoff=2, backoff_max=10)
        self.save(options=opts)
        self.assertEqual([2, 4, 8, 10, 10, 10], sleeps)

    def test_connection_error_retried(self):
        self.serve({'exc': requests.exceptions.ConnectionError('refused')},
                   self.whole())
        opts, sleeps = small_options()
        self.save(options=opts)
        self.assertEqual([1.0], sleeps)

    def test_retries_bounded_and_partial_kept(self):
        cut = 2 * 8192
        self.serve({'status_code': 200, 'body': Flaky(DATA, cut),
                    'headers': {}},
                   *([{'status_code': 503}] * 10))
        opts, sleeps = small_options(retries=3)
        e = self.assertRaises(errors.BackupError, self.save, options=opts)
        self.assertIn('failed after 3 retries', str(e))
        self.assertIn('run the same command again to resume', str(e))
        self.assertEqual([1.0, 2.0, 4.0], sleeps)
        self.assertEqual(['.img.raw.partial'], self.listing())
        self.assertEqual(['img.raw.part', 'state.json'],
                         sorted(os.listdir(self.partial)))
        self.assertEqual(cut, os.path.getsize(self.part))
        # ... and the next run resumes it
        self.adapter.register_uri('GET', self.file_url,
                                  [self.ranged(DATA, cut)])
        saved = self.save()
        self.assertEqual(cut, saved.resumed_from)
        with open(self.final, 'rb') as f:
            self.assertEqual(DATA, f.read())

    def test_404_not_retried(self):
        self.serve({'status_code': 404, 'text': 'gone'})
        opts, sleeps = small_options()
        e = self.assertRaises(errors.BackupError, self.save, options=opts)
        self.assertIn('HTTP 404', str(e))
        self.assertEqual([], sleeps)

    def test_write_error_not_retried(self):
        self.serve(self.whole())
        opts, sleeps = small_options()
        with mock.patch.object(os, 'pwrite',
                               side_effect=OSError(28, 'No space left')):
            e = self.assertRaises(errors.BackupError, self.save,
                                  options=opts)
        self.assertIn('No space left', str(e))
        self.assertEqual([], sleeps)

    def test_interrupt_keeps_partial(self):
        from osc_backup.common.errors import Interrupted
        self.serve({'status_code': 200,
                    'body': Flaky(DATA, 8192 * 2, Interrupted('SIGTERM')),
                    'headers': {}})
        stream = io.StringIO()
        from osc_backup.common.progress import Reporter
        self.assertRaises(Interrupted, self.save,
                          reporter=Reporter(stream=stream, progress=False))
        self.assertIn('run the same command again to resume',
                      stream.getvalue())
        self.assertTrue(os.path.exists(self.part))
        self.assertFalse(os.path.exists(self.final))


    def test_cancelled_run_stops_the_download(self):
        # a worker of backup run whose run got a signal
        from osc_backup.common import waits
        from osc_backup.common.errors import Interrupted
        self.serve(self.whole())
        token = waits.Cancellation()
        token.cancel('SIGTERM')
        with waits.cancellable(token):
            e = self.assertRaises(Interrupted, self.save)
        self.assertEqual('SIGTERM', e.signame)
        self.assertFalse(os.path.exists(self.final))


class TestFreeSpace(DownloadTestCase):
    def statvfs(self, free):
        return mock.Mock(f_bavail=free // 4096, f_frsize=4096)

    def test_not_enough_space(self):
        self.serve(self.whole())
        with mock.patch.object(os, 'statvfs',
                               return_value=self.statvfs(4096 * 10)):
            e = self.assertRaises(errors.InvalidInput, self.save)
        self.assertIn('Not enough free space', str(e))
        self.assertEqual([], self.file_requests())
        self.assertEqual([], self.listing())

    def test_resume_needs_only_the_rest(self):
        self.write_partial(DATA[:90_112])
        self.serve(self.ranged(DATA, 90_112))
        calls = []

        def check(directory, needed):
            calls.append(needed)

        with mock.patch.object(backup_set, 'check_free_space', check):
            self.save()
        self.assertEqual([len(DATA) - 90_112], calls)

    def test_margin(self):
        needed = 10 * transfer.MiB
        with mock.patch.object(os, 'statvfs',
                               return_value=self.statvfs(needed)):
            self.assertRaises(errors.InvalidInput,
                              backup_set.check_free_space, '/x', needed)
        with mock.patch.object(
                os, 'statvfs',
                return_value=self.statvfs(needed + 2 * transfer.MiB)):
            backup_set.check_free_space('/x', needed)


class TestFlusher(testtools.TestCase):
    def test_windows(self):
        calls = []
        with mock.patch.object(transfer, '_sync_file_range',
                               lambda fd, o, n, f: calls.append((o, n, f))
                               or True), \
                mock.patch.object(os, 'posix_fadvise') as fadv:
            fl = transfer._Flusher(7, 100, True)
            fl.written(50)
            self.assertEqual([], calls)
            fl.written(250)
            self.assertEqual([(0, 100, 2), (100, 100, 2), (0, 100, 7)],
                             calls)
            fadv.assert_called_once_with(
                7, 0, 100, os.POSIX_FADV_DONTNEED)

    def test_disabled(self):
        with mock.patch.object(transfer, '_sync_file_range') as sfr:
            transfer._Flusher(7, 0, True).written(10 ** 9)
        sfr.assert_not_called()

    def test_real_sync_file_range(self):
        path = self.useFixture(fixtures.TempDir()).path + '/f'
        fd = os.open(path, os.O_RDWR | os.O_CREAT)
        self.addCleanup(os.close, fd)
        os.write(fd, b'x' * 8192)
        self.assertTrue(transfer._sync_file_range(fd, 0, 8192, 7))


class TestNaming(testtools.TestCase):
    def test_default_filename(self):
        self.assertEqual('db-data-backup-3f2a9c1b.raw',
                         image_save.default_filename(record()))
        self.assertEqual('3f2a9c1b-7d4e-4f6a-9b1c-0123456789ab-3f2a9c1b.qcow2',
                         image_save.default_filename(
                             record(name=None, disk_format='qcow2')))
        self.assertEqual('x-3f2a9c1b.ova', image_save.default_filename(
            record(name='../x', container_format='ova')))

    def test_hostile_server_strings(self):
        hostile = ['../..', '..', '.', '/etc/passwd', '.hidden',
                   'a\nb', 'a\rb\x1b[31m', '\x00', 'a/../../b', '',
                   '-.-', 'x' * 500, 'é ü', 'a..b']
        for name in hostile:
            for field in ('name', 'disk_format', 'id'):
                over = {field: name}
                if field != 'disk_format':
                    over['container_format'] = 'bare'
                got = image_save.default_filename(record(**over))
                self.assertNotIn('/', got, over)
                self.assertNotIn('..', got, over)
                self.assertFalse(got.startswith(('.', '-')), over)
                self.assertTrue(got.isprintable(), over)
                self.assertLessEqual(len(got), 120, over)
            got = image_save.default_filename(
                record(container_format=name))
            self.assertNotIn('/', got)
            self.assertNotIn('..', got)
            self.assertTrue(got.isprintable())


class TestImageSets(DownloadTestCase):
    def saved_set(self):
        self.serve(self.whole())
        return self.save()

    def test_load_from_manifest_or_data(self):
        saved = self.saved_set()
        for path in (saved.manifest, saved.file):
            bs = backup_set.load_set(path)
            self.assertEqual(saved.manifest, bs.manifest_path)
            self.assertEqual(saved.file, bs.data)
            self.assertEqual(IMAGE_ID, bs.manifest['image']['id'])
            self.assertEqual(saved.checksum_file, bs.checksum_file)
            bs.verify_data()

    def test_load_errors(self):
        e = self.assertRaises(errors.InvalidInput, backup_set.load_set,
                              self.final)
        self.assertIn('neither a manifest', str(e))
        path = os.path.join(self.dir, 'x.manifest.json')
        with open(path, 'w') as f:
            f.write('{"format": "other"}')
        e = self.assertRaises(errors.InvalidInput, backup_set.load_set,
                              path)
        self.assertIn('not an osc-backup image manifest', str(e))
        with open(path, 'w') as f:
            json.dump({'format': backup_set.FORMAT, 'format_version': 99},
                      f)
        e = self.assertRaises(errors.InvalidInput, backup_set.load_set,
                              path)
        self.assertIn('upgrade osc-backup', str(e))

    def test_create_body_leaves_out_glance_owned(self):
        saved = self.saved_set()
        m = backup_set.load_set(saved.manifest).manifest
        body = image_restore.create_body(m, name='new', properties={'a': 'b'})
        self.assertEqual({
            'name': 'new',
            'disk_format': 'raw',
            'container_format': 'bare',
            'min_disk': 1,
            'min_ram': 0,
            'visibility': 'private',
            'tags': ['nightly'],
            'osc_backup_tool': 'osc-backup',
            'osc_backup_source_volume_id': 'v-1',
            'hw_disk_bus': 'scsi',
            'a': 'b',
        }, body)

    def test_create_body_public_not_restored(self):
        m = {'glance_record': record(visibility='public')}
        stream = io.StringIO()
        from osc_backup.common.progress import Reporter
        body = image_restore.create_body(
            m, reporter=Reporter(stream=stream, progress=False))
        self.assertNotIn('visibility', body)
        self.assertIn("was 'public'", stream.getvalue())


class RestoreTestCase(DownloadTestCase):
    """A saved set and a Glance that takes it back."""

    NEW_ID = 'aaaaaaaa-0000-0000-0000-000000000000'

    def setUp(self):
        super().setUp()
        self.serve(self.whole())
        self.saved = self.save()
        self.uploaded = []

        def put(request, context):
            self.uploaded.append(b''.join(request.body))
            context.status_code = 204
            return b''

        self.adapter.register_uri(
            'POST', f'{ENDPOINT}/images', status_code=201,
            json={'id': self.NEW_ID})
        self.adapter.register_uri(
            'PUT', f'{ENDPOINT}/images/{self.NEW_ID}/file', content=put)
        self.conn.image.get_image = mock.Mock(return_value='img')
        self.conn.image.delete_image = mock.Mock()
        self.conn.image.update_image = mock.Mock(side_effect=self._update)
        self.active = mock.Mock(
            id=self.NEW_ID, status='active', size=len(DATA),
            disk_format='raw', container_format='bare',
            hash_algo='sha512', hash_value=hashlib.sha512(DATA).hexdigest(),
            checksum=hashlib.md5(DATA).hexdigest())
        self.active.name = 'restored'
        self.wait = self.useFixture(fixtures.MockPatch(
            'osc_backup.common.waits.wait_for_status',
            return_value=self.active)).mock

    def writes(self):
        return [h for h in self.adapter.request_history
                if h.method in ('POST', 'PUT', 'PATCH', 'DELETE')]

    def _update(self, image, **attrs):
        for key, value in attrs.items():
            setattr(self.active, key, value)
        return self.active


class TestRestore(RestoreTestCase):
    def test_restore(self):
        r = image_restore.restore_image(
            self.conn, self.saved.manifest, name='restored',
            properties={'k': 'v'}, run=tags.Run(run_id='0123456789ab'))
        post = next(h for h in self.adapter.request_history
                if h.method == 'POST')
        body = post.json()
        # uploaded under the run's temporary name, renamed once verified
        self.assertEqual(
            'osc-backup-tmp-0123456789ab-image-of-restored', body['name'])
        self.conn.image.update_image.assert_called_once_with(
            self.NEW_ID, name='restored')
        self.assertEqual('restored', r.name)
        self.assertEqual('v', body['k'])
        self.assertEqual('osc-backup', body['osc_backup_tool'])
        for owned in ('id', 'status', 'checksum', 'os_hash_value', 'size',
                      'owner', 'file', 'self', 'schema', 'stores',
                      'os_glance_import_task', 'created_at'):
            self.assertNotIn(owned, body)
        self.assertEqual([DATA], self.uploaded)
        self.assertEqual(self.NEW_ID, r.image_id)
        self.assertEqual('sha512', r.verified)
        self.assertEqual(IMAGE_ID, r.source_image_id)
        self.conn.image.delete_image.assert_not_called()

    def test_a_checked_set_is_not_hashed_again(self):
        # server restore checks every set before the first upload
        checked = image_restore.check_set(
            self.conn, self.saved.manifest, properties={'k': 'v'})
        self.assertEqual([], self.writes())
        with mock.patch.object(image_restore.backup_set, 'file_digest',
                               side_effect=AssertionError('hashed')):
            r = image_restore.restore_image(self.conn, checked)
        self.assertEqual(self.NEW_ID, r.image_id)
        post = next(h for h in self.adapter.request_history
                    if h.method == 'POST')
        # the properties it was checked with
        self.assertEqual('v', post.json()['k'])
        self.assertEqual([DATA], self.uploaded)

    def test_temporary_name_kept_until_finished(self):
        r = image_restore.restore_image(
            self.conn, self.saved.manifest, name='web-root',
            run=tags.Run(run_id='0123456789ab'), rename=False)
        self.conn.image.update_image.assert_not_called()
        self.assertEqual(('web-root', False), (r.final_name, r.protect))
        image_restore.finish_image(self.conn, r)
        self.conn.image.update_image.assert_called_once_with(
            self.NEW_ID, name='web-root')

    def test_restore_from_data_file(self):
        r = image_restore.restore_image(self.conn, self.saved.file)
        self.assertEqual(self.NEW_ID, r.image_id)

    def test_glance_hash_mismatch_deletes_image(self):
        self.active.hash_value = 'f' * 128
        e = self.assertRaises(errors.BackupError, image_restore.restore_image,
                              self.conn, self.saved.manifest)
        self.assertIn('the upload is corrupt', str(e))
        self.conn.image.delete_image.assert_called_once_with(
            self.NEW_ID, ignore_missing=True)

    def test_other_algorithm_compares_md5(self):
        self.active.hash_algo = 'sha384'
        self.active.hash_value = 'x'
        r = image_restore.restore_image(self.conn, self.saved.manifest)
        self.assertEqual('md5', r.verified)

    def test_local_file_damaged(self):
        with open(self.saved.file, 'r+b') as f:
            f.seek(100)
            f.write(b'\0\1\2')
        e = self.assertRaises(errors.InvalidInput,
                              image_restore.restore_image,
                              self.conn, self.saved.manifest)
        self.assertIn('does not match its backup set', str(e))
        self.assertEqual([], [h for h in self.adapter.request_history
                              if h.method in ('POST', 'PUT')])

    def test_truncated_file_refused_before_upload(self):
        with open(self.saved.file, 'r+b') as f:
            f.truncate(10)
        e = self.assertRaises(errors.InvalidInput, image_restore.restore_image,
                              self.conn, self.saved.manifest)
        self.assertIn('incomplete', str(e))
        self.assertEqual([], self.uploaded)

    def test_protected_set_after_verification(self):
        with open(self.saved.manifest) as f:
            m = json.load(f)
        m['image']['protected'] = True
        m['glance_record']['protected'] = True
        rewrite_manifest(self.saved, m)
        image_restore.restore_image(self.conn, self.saved.manifest)
        body = next(h for h in self.adapter.request_history
                if h.method == 'POST').json()
        self.assertNotIn('protected', body)
        self.conn.image.update_image.assert_called_with(
            self.active, is_protected=True)


class TestFileRules(DownloadTestCase):
    """Files the tool writes: never through a symlink, never over an
    existing file unless asked, 0600/0700, safe names, one checksum."""

    def plant(self, path, name='victim'):
        victim = os.path.join(self.dir, name)
        with open(victim, 'wb') as f:
            f.write(b'precious')
        os.symlink(victim, path)
        return victim

    def assertUntouched(self, victim):
        with open(victim, 'rb') as f:
            self.assertEqual(b'precious', f.read())

    def test_symlink_at_partial_name_not_written_through(self):
        victim = os.path.join(self.dir, 'victim-dir')
        os.mkdir(victim)
        os.symlink(victim, self.partial)
        self.serve(self.whole())
        e = self.assertRaises(errors.InvalidInput, self.save)
        self.assertIn('symbolic link', str(e))
        self.assertEqual([], os.listdir(victim))
        self.assertEqual([], self.file_requests())
        self.assertTrue(os.path.islink(self.partial))

    def test_symlink_at_part_name_not_written_through(self):
        self.write_partial(b'')
        os.unlink(self.part)
        victim = self.plant(self.part)
        self.serve(self.whole())
        for kwargs in ({}, {'overwrite': True}):
            e = self.assertRaises(errors.InvalidInput, self.save, **kwargs)
            self.assertIn('symbolic link', str(e))
            self.assertUntouched(victim)
        self.assertEqual([], self.file_requests())

    def test_symlink_in_a_stale_partial_removed_not_followed(self):
        os.mkdir(self.partial, 0o700)
        victims = [self.plant(self.part, 'victim-1'),
                   self.plant(self.state, 'victim-2')]
        self.serve(self.whole())
        self.save()
        for victim in victims:
            self.assertUntouched(victim)
        self.assertFalse(os.path.lexists(self.partial))
        with open(self.final, 'rb') as f:
            self.assertEqual(DATA, f.read())

    def test_partial_directory_of_another_user_refused(self):
        os.mkdir(self.partial, 0o700)
        with mock.patch.object(os, 'geteuid', return_value=12345):
            e = self.assertRaises(errors.InvalidInput, self.save)
        self.assertIn('another user', str(e))

    def test_symlink_at_final_names_refused_without_overwrite(self):
        for name in ('img.raw', 'img.raw.manifest.json', 'img.raw.sha512',
                     'img.raw.sha256'):
            path = os.path.join(self.dir, name)
            victim = self.plant(path)
            self.serve(self.whole())
            e = self.assertRaises(errors.InvalidInput, self.save)
            self.assertIn('already exists', str(e))
            self.assertUntouched(victim)
            os.unlink(path)
            os.unlink(victim)
        self.assertEqual([], self.file_requests())

    def test_symlink_at_final_names_replaced_with_overwrite(self):
        victims = {}
        for name in ('img.raw', 'img.raw.manifest.json', 'img.raw.sha512'):
            path = os.path.join(self.dir, name)
            victim = os.path.join(self.dir, 'victim-' + name)
            with open(victim, 'wb') as f:
                f.write(b'precious')
            os.symlink(victim, path)
            victims[path] = victim
        self.serve(self.whole())
        self.save(overwrite=True)
        for path, victim in victims.items():
            self.assertFalse(os.path.islink(path), path)
            self.assertUntouched(victim)
        with open(self.final, 'rb') as f:
            self.assertEqual(DATA, f.read())

    def test_final_appearing_during_download_not_replaced(self):
        def body(request, context):
            with open(self.final, 'w') as f:
                f.write('theirs')
            return DATA

        self.adapter.register_uri('GET', self.file_url, content=body)
        e = self.assertRaises(errors.InvalidInput, self.save)
        self.assertIn('appeared while the set was written', str(e))
        with open(self.final) as f:
            self.assertEqual('theirs', f.read())
        # the complete set is kept for the next run
        self.assertEqual(
            ['img.raw.manifest.json', 'img.raw.part', 'img.raw.sha512',
             'state.json'], sorted(os.listdir(self.partial)))

    def test_modes_0600_whatever_the_umask(self):
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        self.serve(self.whole())
        saved = self.save()
        for path in saved.files:
            self.assertEqual(0o600, os.stat(path).st_mode & 0o777, path)

    def test_partial_file_mode_0600(self):
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        self.serve({'status_code': 200, 'body': Flaky(DATA, 8192 * 2),
                    'headers': {}}, *([{'status_code': 503}] * 3))
        opts, _ = small_options(retries=1)
        self.assertRaises(errors.BackupError, self.save, options=opts)
        self.assertEqual(0o600, os.stat(self.part).st_mode & 0o777)
        self.assertEqual(0o600, os.stat(self.state).st_mode & 0o777)

    def test_new_directories_0700(self):
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        self.serve(self.whole())
        target = os.path.join(self.dir, 'a', 'b')
        saved = image_save.save_image(
            self.conn, IMAGE_ID, target, as_file=False,
            options=small_options()[0])
        for d in (os.path.join(self.dir, 'a'), target):
            self.assertEqual(0o700, os.stat(d).st_mode & 0o777, d)
        self.assertEqual(0o600, os.stat(saved.file).st_mode & 0o777)

    def test_one_hash_computed(self):
        seen = []
        real = transfer.receive

        def spy(*args, **kwargs):
            seen.append(kwargs['algorithms'])
            return real(*args, **kwargs)

        self.serve(self.whole())
        with mock.patch.object(transfer, 'receive', spy):
            self.save()
        self.assertEqual([['sha512']], seen)
        self.assertFalse(os.path.exists(self.final + '.sha256'))

    def test_unverified_image_gets_local_sha512(self):
        self.rec = record(os_hash_algo=None, os_hash_value=None,
                          checksum=None)
        self.adapter.register_uri(
            'GET', f'{ENDPOINT}/images/{IMAGE_ID}', json=self.rec)
        self.serve(self.whole())
        saved = self.save(allow_unverified=True)
        self.assertFalse(saved.verified)
        self.assertEqual(hashlib.sha512(DATA).hexdigest(), saved.hash_value)
        with open(saved.manifest) as f:
            m = json.load(f)
        self.assertIsNone(m['data']['verified_algo'])
        self.assertEqual('sha512', m['data']['hash_algo'])

    def test_hostile_hash_algo_not_used_in_a_name(self):
        for algo in ('../../x', 'sha512\nx', 'sha512/..'):
            exp = image_save.expected_hash(record(os_hash_algo=algo))
            self.assertEqual('md5', exp.algorithm, algo)
        exp = image_save.expected_hash(record(os_hash_algo='SHA512'))
        self.assertEqual('sha512', exp.algorithm)
        exp = image_save.expected_hash(record(os_hash_value='../x'))
        self.assertEqual('md5', exp.algorithm)

    def test_overwrite_removes_a_stale_format_1_checksum(self):
        with open(self.final, 'wb') as f:
            f.write(b'old')
        with open(self.final + '.sha256', 'w') as f:
            f.write(f'{hashlib.sha256(b"old").hexdigest()}  img.raw\n')
        other = os.path.join(self.dir, 'img.raw.sha1')
        with open(other, 'w') as f:
            f.write('not a checksum file of ours')
        self.serve(self.whole())
        self.save(overwrite=True)
        self.assertFalse(os.path.exists(self.final + '.sha256'))
        self.assertTrue(os.path.exists(other))

    def assertChecks(self, saved):
        """Two lines (data, manifest); sha512sum -c agrees."""
        with open(saved.checksum_file) as f:
            self.assertEqual(2, len(f.read().splitlines()))
        p = subprocess.run(
            ['sha512sum', '-c', os.path.basename(saved.checksum_file)],
            cwd=self.dir, capture_output=True, text=True)
        self.assertEqual(0, p.returncode, p.stdout + p.stderr)

    def test_hostile_names_from_the_server(self):
        self.rec = record(name='../../etc/passwd\nx  y', disk_format='../raw',
                          container_format='bare')
        self.adapter.register_uri(
            'GET', f'{ENDPOINT}/images/{IMAGE_ID}', json=self.rec)
        self.serve(self.whole())
        saved = image_save.save_image(
            self.conn, IMAGE_ID, self.dir, options=small_options()[0])
        self.assertEqual(self.dir, os.path.dirname(saved.file))
        self.assertChecks(saved)

    def test_user_file_name_with_newline_checks(self):
        self.serve(self.whole())
        target = os.path.join(self.dir, 'my\nimage\\.raw')
        saved = self.save(target)
        self.assertChecks(saved)


class TestInterruptedSet(DownloadTestCase):
    """A run stopped while the set was renamed into place is finished by
    the next one, without downloading again."""

    def interrupted(self, at):
        real = backup_set.publish

        def publish(src, dst, **kwargs):
            if dst.endswith(at):
                raise KeyboardInterrupt()
            return real(src, dst, **kwargs)

        self.serve(self.whole())
        with mock.patch.object(backup_set, 'publish', publish):
            self.assertRaises(KeyboardInterrupt, self.save)

    def test_finished_after_interrupt_between_renames(self):
        for at in ('img.raw', '.manifest.json', '.sha512'):
            for name in self.listing():
                path = os.path.join(self.dir, name)
                if os.path.isdir(path):
                    import shutil
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
            self.interrupted(at)
            self.assertTrue(os.path.isdir(self.partial), at)
            self.assertFalse(os.path.exists(self.final + '.sha512'))
            before = len(self.file_requests())
            saved = self.save()
            self.assertEqual(before, len(self.file_requests()), at)
            self.assertEqual(len(DATA), saved.resumed_from)
            self.assertEqual(['img.raw', 'img.raw.manifest.json',
                              'img.raw.sha512'], self.listing(), at)
            p = subprocess.run(['sha512sum', '-c', 'img.raw.sha512'],
                               cwd=self.dir, capture_output=True, text=True)
            self.assertEqual(0, p.returncode, p.stdout + p.stderr)

    def test_moved_file_replaced_meanwhile_is_not_trusted(self):
        self.interrupted('.manifest.json')
        with open(self.final, 'r+b') as f:
            f.write(b'X')
        e = self.assertRaises(errors.BackupError, self.save)
        self.assertIn('cannot be finished', str(e))

    def test_moved_file_swapped_for_a_symlink_is_not_trusted(self):
        self.interrupted('.manifest.json')
        os.rename(self.final, self.final + '.moved')
        os.symlink(self.final + '.moved', self.final)
        e = self.assertRaises(errors.BackupError, self.save)
        self.assertIn('cannot be finished', str(e))

    def test_set_written_in_partial_directory(self):
        seen = []
        real = backup_set.SetWriter.publish

        def publish(writer, members, **kwargs):
            seen.append((self.listing(), sorted(os.listdir(writer.path))))
            return real(writer, members, **kwargs)

        self.serve(self.whole())
        with mock.patch.object(backup_set.SetWriter, 'publish', publish):
            self.save()
        self.assertEqual([(
            ['.img.raw.partial'],
            ['img.raw.manifest.json', 'img.raw.part', 'img.raw.sha512',
             'state.json'],
        )], seen)
        self.assertEqual(0o700, os.stat(self.dir).st_mode & 0o700)

    def test_exists_after_finished_run_cleans_leftover_state(self):
        self.serve(self.whole())
        self.save()
        os.mkdir(self.partial, 0o700)
        with open(self.state, 'w') as f:
            f.write('{}')
        e = self.assertRaises(errors.InvalidInput, self.save)
        self.assertIn('already exists', str(e))
        self.assertFalse(os.path.exists(self.partial))


class TestTamperedSets(RestoreTestCase):
    """Restore validates the set before anything is created."""

    def setUp(self):
        super().setUp()
        with open(self.saved.manifest) as f:
            self.pristine = f.read()

    def manifest(self):
        return json.loads(self.pristine)

    def refused(self, *words, error=errors.InvalidInput):
        before = len(self.writes())
        e = self.assertRaises(error, image_restore.restore_image,
                              self.conn, self.saved.manifest)
        for word in words:
            self.assertIn(word, str(e))
        self.assertNotIn('\n', str(e))
        self.assertEqual(before, len(self.writes()))
        self.conn.image.delete_image.assert_not_called()
        return e

    def tamper(self, change):
        m = self.manifest()
        change(m)
        rewrite_manifest(self.saved, m)

    def test_data_file_outside_the_set(self):
        outside = os.path.join(os.path.dirname(self.dir), 'outside.raw')
        with open(outside, 'wb') as f:
            f.write(DATA)
        self.addCleanup(os.unlink, outside)
        for name in ('../outside.raw', outside, '..', '.', '',
                     'sub/img.raw'):
            self.tamper(lambda m, n=name: m['data'].update(file=n))
            self.refused('data.file')

    def test_key_file_outside_the_set(self):
        def change(m):
            m['encryption'] = {'cinder_encryption_key_id': 'k',
                               'key_file': '../x.key'}
        self.tamper(change)
        self.refused('encryption.key_file')

    def test_symlink_leaving_the_set(self):
        outside = os.path.join(os.path.dirname(self.dir), 'elsewhere.raw')
        with open(outside, 'wb') as f:
            f.write(DATA)
        self.addCleanup(os.unlink, outside)
        os.unlink(self.saved.file)
        os.symlink(outside, self.saved.file)
        self.refused('symbolic link leading out')

    def test_symlink_inside_the_set_accepted(self):
        inside = os.path.join(self.dir, 'real-data.raw')
        os.rename(self.saved.file, inside)
        os.symlink('real-data.raw', self.saved.file)
        r = image_restore.restore_image(self.conn, self.saved.manifest)
        self.assertEqual(self.NEW_ID, r.image_id)

    def test_wrong_types(self):
        for path, value, words in (
            (('data',), 'x', 'data must be dict'),
            (('data', 'size'), '100', 'data.size must be int'),
            (('data', 'size'), True, 'data.size must be int'),
            (('data', 'size'), -1, 'negative'),
            (('data', 'hash_value'), 5, 'data.hash_value must be str'),
            (('data', 'hash_value'), 'zz', 'not a hex digest'),
            (('data', 'hash_algo'), '../md5', 'not a hash algorithm'),
            (('data', 'checksum_file'), '../x', 'data.checksum_file'),
            (('image',), None, 'image must be dict'),
            (('image', 'protected'), 'yes', 'image.protected'),
            (('image', 'min_disk'), '1', 'image.min_disk'),
            (('image', 'tags'), 'nightly', 'image.tags'),
            (('glance_record',), [], 'glance_record must be dict'),
        ):
            def change(m, path=path, value=value):
                target = m
                for key in path[:-1]:
                    target = target[key]
                target[path[-1]] = value
            self.tamper(change)
            self.refused('not a valid backup set manifest', words)

    def test_bad_versions(self):
        for version, words in ((99, 'upgrade osc-backup'),
                               ('2', 'format_version must be int'),
                               (True, 'format_version must be int'),
                               (0, 'does not exist'),
                               (None, 'format_version must be int')):
            self.tamper(lambda m, v=version: m.update(format_version=v))
            self.refused(words)

    def test_not_json_not_ours(self):
        for blob, words in ((b'{not json', 'not JSON'),
                            (b'[]', 'not an osc-backup image manifest'),
                            (b'{"format": "x"}', 'not an osc-backup')):
            with open(self.saved.manifest, 'wb') as f:
                f.write(blob)
            self.refused(words)

    def test_manifest_changed_without_its_checksum(self):
        m = self.manifest()
        m['glance_record']['name'] = 'forged'
        with open(self.saved.manifest, 'w') as f:
            json.dump(m, f)
        self.refused('the manifest was changed')

    def test_checksum_file_lists_other_data(self):
        with open(self.saved.checksum_file) as f:
            text = f.read()
        with open(self.saved.checksum_file, 'w') as f:
            f.write(text.replace(self.saved.hash_value, 'a' * 128))
        self.refused('lists', 'the set was changed')

    def test_checksum_file_missing(self):
        os.unlink(self.saved.checksum_file)
        self.refused('checksum file', 'incomplete')

    def test_data_changed_consistently_with_manifest_is_caught(self):
        # the data is replaced and the manifest and checksum file updated
        # to match it: Glance's own hash still catches the swap
        other = os.urandom(len(DATA))
        with open(self.saved.file, 'wb') as f:
            f.write(other)
        value = hashlib.sha512(other).hexdigest()
        self.tamper(lambda m: m['data'].update(hash_value=value))
        with open(self.saved.checksum_file) as f:
            text = f.read()
        with open(self.saved.checksum_file, 'w') as f:
            f.write(text.replace(self.saved.hash_value, value))
        e = self.assertRaises(errors.BackupError,
                              image_restore.restore_image, self.conn,
                              self.saved.manifest)
        self.assertIn('the upload is corrupt', str(e))
        self.conn.image.delete_image.assert_called_once()

    def test_format_1_set_still_restored(self):
        # what osc-backup wrote before: sha256 in the manifest, .sha256
        m = self.manifest()
        data = m['data']
        for key in ('hash_algo', 'hash_value', 'checksum_file'):
            del data[key]
        data['sha256'] = hashlib.sha256(DATA).hexdigest()
        m['format_version'] = 1
        blob = json.dumps(m).encode()
        with open(self.saved.manifest, 'wb') as f:
            f.write(blob)
        os.unlink(self.saved.checksum_file)
        with open(self.final + '.sha256', 'w') as f:
            f.write(f"{data['sha256']}  img.raw\n"
                    f'{hashlib.sha256(blob).hexdigest()}  '
                    'img.raw.manifest.json\n')
        r = image_restore.restore_image(self.conn, self.saved.manifest)
        self.assertEqual(self.NEW_ID, r.image_id)
        self.assertEqual([DATA], self.uploaded)
        # ... and a damaged one is refused before anything
        with open(self.final, 'r+b') as f:
            f.write(b'X')
        self.refused('does not match its backup set')
