"""Spec'd openstacksdk proxies and fake resources for unit tests."""

from unittest import mock

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


class FakeClientMixin:
    """Puts spec'd proxies on ``client_manager.sdk_connection``."""

    def setUp(self):
        super().setUp()
        self.block_storage, self.image_client = make_proxies()
        conn = self.app.client_manager.sdk_connection
        conn.block_storage = self.block_storage
        conn.image = self.image_client
        self.conn = conn
