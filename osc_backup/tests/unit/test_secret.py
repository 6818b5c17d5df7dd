import base64
import binascii
import io
import json
import logging
import os
import stat
import tempfile
from unittest import mock

import fixtures
from keystoneauth1 import adapter as ks_adapter
from keystoneauth1 import session as ks_session
from openstack.key_manager import key_manager_service
from openstack.key_manager.v1 import secret as _secret
from openstack.test import fakes as sdk_fakes
from requests_mock.contrib import fixture as rm_fixture

from osc_backup.common import errors
from osc_backup.procedures import secrets
from osc_backup.tests.unit import base

UUID = '0a1b2c3d-0000-4000-8000-00000000000f'
HREF = f'http://kms.example/v1/secrets/{UUID}'
KEY = bytes(range(0, 256, 8))  # 32 bytes, several below 0x10
META = {
    'secret_ref': HREF,
    'name': 'vol-key',
    'secret_type': 'symmetric',
    'algorithm': 'aes',
    'bit_length': 256,
    'mode': None,
    'content_types': {'default': 'application/octet-stream'},
    'created': '2026-11-26T07:34:26',
    'status': 'ACTIVE',
    'expiration': None,
}


def make_km():
    km = sdk_fakes.generate_fake_proxy(
        key_manager_service.KeyManagerService, '1'
    )
    # calls must be configured explicitly by each test
    for name in dir(km):
        attr = getattr(km, name, None)
        if isinstance(attr, mock.Mock | mock.NonCallableMock):
            try:
                attr.side_effect = None
            except AttributeError:
                pass
    return km


def response(status=200, content=b'', js=None):
    resp = mock.Mock(status_code=status, content=content)
    resp.json.return_value = js
    return resp


class FakeKM:
    """A key-manager proxy answering GET/POST like Barbican (spec'd)."""

    def __init__(self, payload=KEY, meta=None):
        self.km = make_km()
        self.meta = dict(meta or META)
        self.payload = payload
        self.km.get.side_effect = self._get
        self.km.post.return_value = response(
            201, js={'secret_ref': 'http://kms.example/v1/secrets/'
                     'ffffffff-0000-4000-8000-000000000001'})

    def _get(self, url, headers=None, **kwargs):
        if url.endswith('/payload'):
            return response(200, content=self.payload)
        if url == f'/secrets/{UUID}':
            return response(200, js=self.meta)
        return response(404, js={})


class TestPassphrases(base.TestCase):
    def test_hexlify(self):
        self.assertEqual(binascii.hexlify(KEY), secrets.luks_passphrase(KEY))
        self.assertEqual(64, len(secrets.luks_passphrase(KEY)))

    def test_legacy_is_os_brick_mangled_form(self):
        mangled = ''.join(hex(x).replace('0x', '') for x in KEY)
        self.assertEqual(mangled.encode(), secrets.legacy_passphrase(KEY))
        # zero padding dropped for bytes < 0x10
        self.assertLess(len(secrets.legacy_passphrase(KEY)), 64)


class TestWritePrivate(base.TestCase):
    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path

    def test_mode_0600_with_wide_umask(self):
        path = os.path.join(self.dir, 'k')
        old = os.umask(0)
        try:
            secrets.write_private(path, b'\x00\xff')
        finally:
            os.umask(old)
        self.assertEqual(0o600, stat.S_IMODE(os.stat(path).st_mode))
        with open(path, 'rb') as f:
            self.assertEqual(b'\x00\xff', f.read())

    def test_never_overwrites(self):
        path = os.path.join(self.dir, 'k')
        with open(path, 'wb') as f:
            f.write(b'keep')
        self.assertRaises(
            errors.InvalidInput, secrets.write_private, path, b'new'
        )
        with open(path, 'rb') as f:
            self.assertEqual(b'keep', f.read())

    def test_uses_o_excl(self):
        path = os.path.join(self.dir, 'k')
        with mock.patch('os.open', wraps=os.open) as opened:
            secrets.write_private(path, b'x')
        flags = opened.call_args[0][1]
        self.assertTrue(flags & os.O_EXCL)
        self.assertTrue(flags & os.O_CREAT)
        self.assertEqual(0o600, opened.call_args[0][2])

    def test_does_not_follow_symlink(self):
        target = os.path.join(self.dir, 'target')
        link = os.path.join(self.dir, 'link')
        os.symlink(target, link)
        self.assertRaises(
            errors.InvalidInput, secrets.write_private, link, b'x'
        )
        self.assertFalse(os.path.exists(target))


class TestFind(base.TestCase):
    def setUp(self):
        super().setUp()
        self.fake = FakeKM()
        self.conn = mock.Mock(key_manager=self.fake.km)

    def test_uuid_and_href(self):
        self.assertEqual(UUID, secrets.secret_uuid(UUID))
        self.assertEqual(UUID, secrets.secret_uuid(HREF))
        self.assertEqual(UUID, secrets.secret_uuid(HREF + '/payload'))
        self.assertIsNone(secrets.secret_uuid('db-key'))

    def test_by_href(self):
        meta = secrets.find_secret(self.conn, HREF)
        self.assertEqual('vol-key', meta['name'])
        self.fake.km.secrets.assert_not_called()

    def test_by_name(self):
        self.fake.km.secrets.return_value = [
            _secret.Secret(name='vol-key', secret_ref=HREF),
            _secret.Secret(name='vol-key-2',
                secret_ref='http://kms.example/v1/secrets/other'),
        ]
        meta = secrets.find_secret(self.conn, 'vol-key')
        self.assertEqual(HREF, meta['secret_ref'])
        self.fake.km.secrets.assert_called_once_with(name='vol-key')

    def test_by_name_duplicate(self):
        res = _secret.Secret(name='k', secret_ref=HREF)
        self.fake.km.secrets.return_value = [res, res]
        exc = self.assertRaises(
            errors.InvalidInput, secrets.find_secret, self.conn, 'k')
        self.assertIn('More than one secret', str(exc))

    def test_missing(self):
        self.fake.km.secrets.return_value = []
        self.assertRaises(
            errors.InvalidInput, secrets.find_secret, self.conn, 'nope')
        self.fake.km.get.side_effect = None
        from openstack import exceptions as sdk_exc
        self.fake.km.get.return_value = mock.Mock(
            status_code=404, headers={}, text='', json=lambda: {})
        with mock.patch.object(
            sdk_exc, 'raise_from_response',
            side_effect=sdk_exc.NotFoundException('gone'),
        ):
            exc = self.assertRaises(
                errors.InvalidInput, secrets.find_secret, self.conn, UUID)
        self.assertIn(UUID, str(exc))


class TestFindErrors(base.TestCase):
    def test_server_error_is_one_clear_error(self):
        from openstack import exceptions as sdk_exc
        km = make_km()
        km.get.side_effect = sdk_exc.HttpException('boom', http_status=500)
        conn = mock.Mock(key_manager=km)
        exc = self.assertRaises(
            errors.BackupError, secrets.find_secret, conn, UUID)
        self.assertIn('Cannot read secret', str(exc))

    def test_no_key_manager(self):
        from openstack import exceptions as sdk_exc
        conn = mock.Mock()
        type(conn).key_manager = mock.PropertyMock(
            side_effect=sdk_exc.SDKException('no endpoint'))
        exc = self.assertRaises(
            errors.BackupError, secrets.find_secret, conn, UUID)
        self.assertIn('Barbican', str(exc))


class TestSaveSecret(base.TestCase):
    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.fake = FakeKM()
        self.conn = mock.Mock(key_manager=self.fake.km)

    def test_file_and_metadata(self):
        path = os.path.join(self.dir, 'key')
        saved = secrets.save_secret(self.conn, UUID, file=path)
        with open(path, 'rb') as f:
            self.assertEqual(KEY, f.read())
        for p in (path, path + '.metadata.json'):
            self.assertEqual(0o600, stat.S_IMODE(os.stat(p).st_mode))
        with open(path + '.metadata.json') as f:
            doc = json.load(f)
        self.assertEqual(
            {'name': 'vol-key', 'secret_type': 'symmetric',
             'algorithm': 'aes', 'bit_length': 256, 'mode': None,
             'content_types': {'default': 'application/octet-stream'},
             'created': '2026-11-26T07:34:26', 'expiration': None,
             'href': HREF, 'id': UUID},
            doc['secret'])
        self.assertEqual('payload', doc['written'])
        self.assertNotIn(KEY.hex(), json.dumps(doc))
        self.assertEqual([path, path + '.metadata.json'], saved.files)
        self.assertEqual(32, saved.size)
        # fetched binary-safe with the secret's content type, unlogged
        self.fake.km.get.assert_any_call(
            f'/secrets/{UUID}/payload',
            headers={'Accept': 'application/octet-stream'}, log=False)

    def test_luks_passphrase_file(self):
        path = os.path.join(self.dir, 'pass')
        secrets.save_secret(
            self.conn, HREF, file=path, written=secrets.PASSPHRASE)
        with open(path, 'rb') as f:
            self.assertEqual(binascii.hexlify(KEY), f.read())
        with open(path + '.metadata.json') as f:
            doc = json.load(f)
        self.assertIn('1633518', doc['note'])

    def test_existing_file_refused_before_fetch(self):
        path = os.path.join(self.dir, 'key')
        open(path, 'w').close()
        self.assertRaises(
            errors.InvalidInput, secrets.save_secret, self.conn, UUID,
            file=path)
        self.fake.km.get.assert_not_called()
        self.assertEqual(0, os.path.getsize(path))

    def test_refuses_binary_to_tty(self):
        out = io.BytesIO()
        exc = self.assertRaises(
            errors.InvalidInput, secrets.save_secret, self.conn, UUID,
            stdout=out, stdout_isatty=True)
        self.assertIn('terminal', str(exc))
        self.assertEqual(b'', out.getvalue())
        # the payload itself was never fetched
        for call in self.fake.km.get.call_args_list:
            self.assertFalse(call.args[0].endswith('/payload'))

    def test_passphrase_to_tty_allowed(self):
        out = io.BytesIO()
        secrets.save_secret(
            self.conn, UUID, stdout=out, stdout_isatty=True,
            written=secrets.PASSPHRASE)
        self.assertEqual(binascii.hexlify(KEY), out.getvalue())

    def test_binary_to_pipe(self):
        out = io.BytesIO()
        secrets.save_secret(self.conn, UUID, stdout=out)
        self.assertEqual(KEY, out.getvalue())

    def test_text_secret_uses_its_content_type(self):
        meta = dict(META, content_types={'default': 'text/plain'})
        self.fake.meta = meta
        self.fake.payload = b'hunter2'
        out = io.BytesIO()
        secrets.save_secret(self.conn, UUID, stdout=out, stdout_isatty=True)
        self.assertEqual(b'hunter2', out.getvalue())
        self.fake.km.get.assert_any_call(
            f'/secrets/{UUID}/payload', headers={'Accept': 'text/plain'},
            log=False)


class TestImageKey(base.TestCase):
    def setUp(self):
        super().setUp()
        self.dir = self.useFixture(fixtures.TempDir()).path
        self.fake = FakeKM()
        self.conn = mock.Mock(key_manager=self.fake.km)
        self.data = os.path.join(self.dir, 'db-123.raw')

    def test_key_files_and_parse(self):
        files = secrets.image_key_files(self.conn, UUID, 'db-123.raw')
        self.assertEqual(
            ['db-123.raw.key', 'db-123.raw.key.luks-passphrase',
             'db-123.raw.key.metadata.json'], sorted(files))
        self.assertEqual(KEY, files['db-123.raw.key'])
        self.assertEqual(binascii.hexlify(KEY),
                         files['db-123.raw.key.luks-passphrase'])
        payload, doc = secrets.parse_image_key(
            files['db-123.raw.key'], files['db-123.raw.key.metadata.json'],
            self.data)
        self.assertEqual(KEY, payload)
        self.assertEqual(UUID, doc['secret']['id'])
        self.assertEqual('db-123.raw', doc['files']['data'])

    def test_parse_refuses_foreign_metadata(self):
        for blob in (b'{not json', b'[]', b'{"format": "x"}'):
            self.assertRaises(errors.InvalidInput, secrets.parse_image_key,
                              KEY, blob, self.data)

    def test_store_secret_unlogged_base64(self):
        href = secrets.store_secret(
            self.conn, KEY, secrets.describe(META), name='restored')
        self.assertTrue(href.endswith('0001'))
        call = self.fake.km.post.call_args
        self.assertEqual('/secrets', call.args[0])
        self.assertIs(False, call.kwargs['log'])
        body = call.kwargs['json']
        self.assertEqual(KEY, base64.b64decode(body['payload']))
        self.assertEqual('application/octet-stream',
                         body['payload_content_type'])
        self.assertEqual('base64', body['payload_content_encoding'])
        self.assertEqual('symmetric', body['secret_type'])
        self.assertEqual(256, body['bit_length'])
        self.assertNotIn('mode', body)


class TestNoPayloadInDebugLog(base.TestCase):
    """A real keystoneauth session at DEBUG: the payload stays out."""

    PAYLOAD = b'secret-text-payload-4f1c'

    def setUp(self):
        super().setUp()
        self.requests = self.useFixture(rm_fixture.Fixture())
        self.logs = self.useFixture(
            fixtures.FakeLogger(level=logging.DEBUG, format='%(message)s'))
        meta = dict(META, secret_ref=HREF,
                    content_types={'default': 'text/plain'})
        self.requests.get(
            f'http://kms.example/v1/secrets/{UUID}', json=meta,
            headers={'Content-Type': 'application/json'})
        self.requests.get(
            f'http://kms.example/v1/secrets/{UUID}/payload',
            content=self.PAYLOAD, headers={'Content-Type': 'text/plain'})
        self.requests.post(
            'http://kms.example/v1/secrets', status_code=201,
            json={'secret_ref': HREF},
            headers={'Content-Type': 'application/json'})
        sess = ks_session.Session()
        self.km = ks_adapter.Adapter(
            sess, endpoint_override='http://kms.example/v1')
        self.conn = mock.Mock(key_manager=self.km)

    def test_logged_without_log_false(self):
        # the trap this module avoids: a logged text payload
        self.km.get(f'/secrets/{UUID}/payload')
        self.assertIn(self.PAYLOAD.decode(), self.logs.output)

    def test_fetch_not_logged(self):
        meta = secrets.find_secret(self.conn, UUID)
        payload, ctype = secrets.fetch_payload(self.conn, meta)
        self.assertEqual(self.PAYLOAD, payload)
        self.assertEqual('text/plain', ctype)
        self.assertIn('/secrets/' + UUID, self.logs.output)  # meta logged
        self.assertNotIn(self.PAYLOAD.decode(), self.logs.output)

    def test_store_not_logged(self):
        secrets.store_secret(
            self.conn, self.PAYLOAD, secrets.describe(META),
            content_type_='text/plain')
        self.assertNotIn(self.PAYLOAD.decode(), self.logs.output)
        self.assertEqual(
            self.PAYLOAD.decode(),
            self.requests.last_request.json()['payload'])

    def test_save_with_tempfile(self):
        path = os.path.join(tempfile.mkdtemp(dir=self.useFixture(
            fixtures.TempDir()).path), 'k')
        secrets.save_secret(self.conn, UUID, file=path)
        self.assertNotIn(self.PAYLOAD.decode(), self.logs.output)
