"""A file-backed Cinder volume driver for the minicloud test cloud.

Each volume is a sparse raw file ``<file_volume_dir>/volume-<id>``.
Snapshots and clones are full sparse copies, extend is a truncate, and
attachments hand out the file itself (``driver_volume_type: local``), so
unmodified Cinder code (attachments API, backup/restore, upload to image,
volume from image, key cloning for LUKS volumes) works end to end without
LVM, iSCSI or device-mapper.

This is test tooling, not a production driver: there is no locking across
hosts, no real isolation and no data protection.
"""

import os
import time

from oslo_config import cfg
from oslo_log import log as logging

from cinder.image import image_utils
from cinder import interface
from cinder.volume import configuration
from cinder.volume import driver
from cinder.volume import volume_utils

LOG = logging.getLogger(__name__)

file_opts = [
    cfg.StrOpt('file_volume_dir',
               default='/var/tmp/osc-backup-minicloud/data/cinder-volumes',
               help='Directory holding one sparse file per volume.'),
]

CONF = cfg.CONF
CONF.register_opts(file_opts, group=configuration.SHARED_CONF_GROUP)

GiB = 1024 ** 3

#: A temporary volume of osc-backup (name prefix osc-backup-tmp-) whose
#: name holds this marker takes SLOW_DELETE_SECONDS to delete, as on a
#: backend that wipes volumes on deletion (LVM with ``volume_clear=zero``).
#: Tests that must interrupt a cleanup while it waits put the marker in the
#: name of the source volume (a temporary volume's name holds it).
SLOW_DELETE_MARKER = 'slow-delete'
SLOW_DELETE_SECONDS = 30


@interface.volumedriver
class FileDriver(driver.VolumeDriver):
    """Sparse files as volumes, attached as local paths."""

    VERSION = '1.0.0'
    CI_WIKI_NAME = 'none'
    SUPPORTS_ACTIVE_ACTIVE = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(file_opts)
        self.backend_name = (
            self.configuration.safe_get('volume_backend_name') or 'file')
        self.protocol = 'local'

    # ---- helpers -------------------------------------------------------
    @property
    def _dir(self):
        return self.configuration.file_volume_dir

    def _path(self, name):
        return os.path.join(self._dir, name)

    def local_path(self, volume):
        return self._path(volume['name'])

    def _snapshot_path(self, snapshot):
        return self._path(snapshot['name'])

    def _ensure_size(self, path, size_gb):
        """Grow (never shrink) a file to size_gb GiB."""
        want = int(size_gb) * GiB
        if not os.path.exists(path) or os.path.getsize(path) < want:
            with open(path, 'ab') as f:
                f.truncate(want)

    def _copy(self, src, dst):
        self._execute('cp', '--sparse=always', src, dst)

    # ---- setup and stats ----------------------------------------------
    def do_setup(self, context):
        os.makedirs(self._dir, exist_ok=True)

    def check_for_setup_error(self):
        if not os.path.isdir(self._dir):
            raise RuntimeError('file_volume_dir %s is missing' % self._dir)

    def _update_volume_stats(self):
        st = os.statvfs(self._dir)
        total = round(st.f_blocks * st.f_frsize / GiB, 2)
        free = round(st.f_bavail * st.f_frsize / GiB, 2)
        names = [n for n in os.listdir(self._dir)
                 if n.startswith(('volume-', 'snapshot-'))]
        provisioned = 0
        for n in names:
            try:
                provisioned += os.path.getsize(self._path(n))
            except OSError:
                pass
        self._stats = {
            'volume_backend_name': self.backend_name,
            'vendor_name': 'osc-backup minicloud',
            'driver_version': self.VERSION,
            'storage_protocol': self.protocol,
            'pools': [{
                'pool_name': self.backend_name,
                'total_capacity_gb': total,
                'free_capacity_gb': free,
                'provisioned_capacity_gb': round(provisioned / GiB, 2),
                'reserved_percentage': 0,
                'max_over_subscription_ratio': (
                    self.configuration.max_over_subscription_ratio),
                'thin_provisioning_support': True,
                'thick_provisioning_support': False,
                'total_volumes': len(names),
                'QoS_support': False,
                'multiattach': True,
                'backend_state': 'up',
            }],
        }

    # ---- volumes and snapshots ----------------------------------------
    def create_volume(self, volume):
        path = self.local_path(volume)
        with open(path, 'wb') as f:
            f.truncate(int(volume['size']) * GiB)
        return {}

    def delete_volume(self, volume):
        name = volume.display_name or ''
        if name.startswith('osc-backup-tmp-') and SLOW_DELETE_MARKER in name:
            time.sleep(SLOW_DELETE_SECONDS)  # green under cinder-volume
        try:
            os.unlink(self.local_path(volume))
        except FileNotFoundError:
            pass

    def extend_volume(self, volume, new_size):
        self._ensure_size(self.local_path(volume), new_size)

    def create_cloned_volume(self, volume, src_vref):
        dst = self.local_path(volume)
        self._copy(self.local_path(src_vref), dst)
        self._ensure_size(dst, volume['size'])
        return {}

    def create_snapshot(self, snapshot):
        self._copy(self.local_path(snapshot.volume),
                   self._snapshot_path(snapshot))

    def delete_snapshot(self, snapshot):
        try:
            os.unlink(self._snapshot_path(snapshot))
        except FileNotFoundError:
            pass

    def create_volume_from_snapshot(self, volume, snapshot):
        dst = self.local_path(volume)
        self._copy(self._snapshot_path(snapshot), dst)
        self._ensure_size(dst, volume['size'])
        return {}

    def revert_to_snapshot(self, context, volume, snapshot):
        path = self.local_path(volume)
        self._copy(self._snapshot_path(snapshot), path)
        self._ensure_size(path, volume['size'])

    # ---- images (as the LVM driver does it, on the local path) --------
    def copy_image_to_volume(self, context, volume, image_service, image_id,
                             disable_sparse=False):
        path = self.local_path(volume)
        image_utils.fetch_to_raw(context, image_service, image_id, path,
                                 self.configuration.volume_dd_blocksize,
                                 size=volume['size'],
                                 disable_sparse=disable_sparse)
        # qemu-img convert leaves the file at the image's size
        self._ensure_size(path, volume['size'])

    def copy_volume_to_image(self, context, volume, image_service,
                             image_meta):
        volume_utils.upload_volume(context, image_service, image_meta,
                                   self.local_path(volume), volume)

    # ---- exports and connections --------------------------------------
    def ensure_export(self, context, volume):
        pass

    def create_export(self, context, volume, connector):
        return None

    def remove_export(self, context, volume):
        pass

    def create_export_snapshot(self, context, snapshot, connector):
        return None

    def remove_export_snapshot(self, context, snapshot):
        pass

    def initialize_connection(self, volume, connector, **kwargs):
        return {'driver_volume_type': 'local',
                'data': {'device_path': self.local_path(volume)}}

    def terminate_connection(self, volume, connector, **kwargs):
        # A restore opens the device with open(path, 'wb'), which truncates
        # a file: give it back its full size.
        path = self.local_path(volume)
        if os.path.exists(path):
            self._ensure_size(path, volume['size'])

    def initialize_connection_snapshot(self, snapshot, connector, **kwargs):
        return {'driver_volume_type': 'local',
                'data': {'device_path': self._snapshot_path(snapshot)}}

    def terminate_connection_snapshot(self, snapshot, connector, **kwargs):
        pass

    def get_pool(self, volume):
        return self.backend_name
