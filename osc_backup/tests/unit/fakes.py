"""Spec'd openstacksdk proxies and fake resources for unit tests."""

import collections
import json
from unittest import mock

import fixtures
from openstack import exceptions as sdk_exc
from openstack import resource as sdk_resource
from openstack.block_storage import block_storage_service
from openstack.block_storage.v3 import snapshot as _snapshot
from openstack.block_storage.v3 import volume as _volume
from openstack.compute import compute_service
from openstack.image import image_service
from openstack.image.v2 import image as _image
from openstack.test import fakes as sdk_fakes


def _unconfigured(proxy):
    """Calls must be configured explicitly by each test."""
    for name in dir(proxy):
        attr = getattr(proxy, name, None)
        if isinstance(attr, mock.Mock | mock.NonCallableMock):
            try:
                attr.side_effect = None
            except AttributeError:
                pass
    return proxy


def make_proxies():
    """Autospecced block_storage (v3) and image (v2) proxies."""
    bs = sdk_fakes.generate_fake_proxy(
        block_storage_service.BlockStorageService, '3'
    )
    image = sdk_fakes.generate_fake_proxy(image_service.ImageService, '2')
    return _unconfigured(bs), _unconfigured(image)


def make_compute_proxy():
    """An autospecced compute (v2) proxy."""
    return _unconfigured(
        sdk_fakes.generate_fake_proxy(compute_service.ComputeService, '2')
    )


def volume(**attrs):
    defaults = {
        'name': 'data',
        'status': 'available',
        'size': 1,
        'volume_type': 'file',
        'is_bootable': False,
        'is_encrypted': False,
        'metadata': {},
    }
    defaults.update(attrs)
    return sdk_fakes.generate_fake_resource(_volume.Volume, **defaults)


def snapshot(**attrs):
    defaults = {'status': 'available', 'metadata': {}}
    defaults.update(attrs)
    return sdk_fakes.generate_fake_resource(_snapshot.Snapshot, **defaults)


def image(**attrs):
    defaults = {
        'status': 'active',
        'size': 1073741824,
        'disk_format': 'raw',
        'container_format': 'bare',
        'checksum': 'c' * 32,
        'hash_algo': 'sha512',
        'hash_value': 'a' * 128,
    }
    defaults.update(attrs)
    return sdk_fakes.generate_fake_resource(_image.Image, **defaults)


def response(status=200, body=None, headers=None):
    """A keystoneauth-like HTTP response."""
    resp = mock.Mock(status_code=status, headers=headers or {})
    resp.json.return_value = body if body is not None else {}
    resp.text = json.dumps(body) if body is not None else ''
    resp.reason = 'reason'
    return resp


def cinder_makes_snapshots(block_storage, snap, max_microversion='3.65'):
    """Cinder offers ``max_microversion`` and answers ``POST /snapshots``
    with ``snap``; what was sent is in ``block_storage.post.call_args``."""
    block_storage.get_endpoint_data.return_value = mock.Mock(
        min_microversion='3.0', max_microversion=max_microversion
    )

    def post(url, json=None, **kwargs):
        assert url == '/snapshots', url
        return response(202, {'snapshot': snap.to_dict()})

    block_storage.post.side_effect = post


def sent_snapshot(block_storage):
    """``(body, microversion)`` of the last ``POST /snapshots``."""
    call = block_storage.post.call_args
    return call.kwargs['json']['snapshot'], call.kwargs['microversion']


class FakeGlance:
    """Images by ID behind an image proxy: ``get_image`` finds them,
    ``patch`` applies Glance's v2.1 JSON patches to them (409 for removing
    a property that is not there, like Glance), ``update_image`` sets
    attributes. What the images end up as is what a test asserts."""

    def __init__(self, image_proxy, *images):
        self.images = {}
        self.patches = []
        for image in images:
            self.add(image)
        image_proxy.get_image.side_effect = self.get
        image_proxy.patch.side_effect = self.patch
        image_proxy.update_image.side_effect = self.update
        self.proxy = image_proxy

    def add(self, image):
        image.properties = dict(image.properties or {})
        self.images[image.id] = image
        return image

    def get(self, image):
        from openstack import exceptions as sdk_exc

        image_id = getattr(image, 'id', image)
        if image_id not in self.images:
            raise sdk_exc.NotFoundException(f'No image {image_id}')
        return self.images[image_id]

    def patch(self, url, data=None, headers=None, **kwargs):
        assert headers['Content-Type'] == (
            'application/openstack-images-v2.1-json-patch'
        )
        image = self.get(url.rsplit('/', 1)[-1])
        ops = json.loads(data)
        self.patches.append(ops)
        for op in ops:
            key = op['path'].lstrip('/')
            if key == 'name':
                image.name = op['value']
            elif op['op'] == 'remove':
                if key not in image.properties:
                    return response(409, {'message': f'no {key}'})
                del image.properties[key]
            else:
                image.properties[key] = op['value']
        return response(200)

    def update(self, image, **attrs):
        image = self.get(image)
        for key, value in attrs.items():
            if key == 'name':
                image.name = value
            else:
                image.properties[key] = value
        return image


class FakeClientMixin:
    """Puts spec'd proxies on ``client_manager.sdk_connection``."""

    def setUp(self):
        super().setUp()
        self.block_storage, self.image_client = make_proxies()
        conn = self.app.client_manager.sdk_connection
        conn.block_storage = self.block_storage
        conn.image = self.image_client
        self.conn = conn


class CloudStatuses(fixtures.Fixture):
    """A fake cloud behind openstacksdk's *real* wait loops.

    The proxies' ``wait_for_status`` / ``wait_for_delete`` become the SDK's
    own polling functions (sleeps, timeouts, callbacks and all), and every
    ``fetch`` they make reads the next status from a timeline set per
    resource: ``cloud.timeline(vol, 'deleting', 'error_deleting')``. The
    last status repeats; ``None`` means the resource is gone (404).
    Unlike ``wait_for_delete.return_value = None``, a wait only ends when
    the cloud says so, and never before its time.
    """

    def __init__(self, *proxies):
        super().__init__()
        self.proxies = proxies
        self.timelines = {}
        #: resource ID -> number of fetches
        self.polls = collections.Counter()

    def _setUp(self):
        self.useFixture(fixtures.MockPatchObject(
            sdk_resource.Resource, 'fetch', autospec=True,
            side_effect=self._fetch,
        ))
        for proxy in self.proxies:
            proxy.wait_for_status.side_effect = self._status_waiter(proxy)
            proxy.wait_for_delete.side_effect = self._delete_waiter(proxy)

    def timeline(self, res, *statuses):
        self.timelines[res.id] = list(statuses)

    def _fetch(self, res, session, *args, **kwargs):
        self.polls[res.id] += 1
        seq = self.timelines.get(res.id)
        if not seq:
            return res
        status = seq.pop(0) if len(seq) > 1 else seq[0]
        if status is None:
            raise sdk_exc.NotFoundException(f'{res.id} not found')
        res.status = status
        return res

    @staticmethod
    def _status_waiter(proxy):
        def wait(res, status='available', failures=None, interval=2,
                 wait=None, attribute='status', callback=None):
            return sdk_resource.wait_for_status(
                proxy, res, status, failures, interval, wait, attribute,
                callback)
        return wait

    @staticmethod
    def _delete_waiter(proxy):
        def wait(res, interval=2, wait=120, callback=None):
            return sdk_resource.wait_for_delete(
                proxy, res, interval, wait, callback)
        return wait
