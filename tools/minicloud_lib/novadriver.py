"""A fake Nova virt driver with a real root disk file per instance.

nova-compute of the minicloud loads it with
``compute_driver = minicloud_lib.novadriver.DiskFakeDriver``.

Nothing boots: this is ``nova.virt.fake.FakeDriver`` plus one raw file per
image-backed instance, ``<minicloud_disk_dir>/<instance uuid>.disk``:

* spawn (image-backed only) downloads the Glance image's bytes into it
  through Nova's own image API;
* snapshot does what the libvirt driver does for Glance: the task-state
  updates IMAGE_PENDING_UPLOAD then IMAGE_UPLOADING, and the upload of the
  file's current bytes to the snapshot image, with disk_format and
  container_format taken from the instance's source image;
* destroy (with destroy_disks) removes the file;
* quiesce and unquiesce do what the libvirt driver checks before it asks
  the guest agent to freeze or thaw the file systems: without the image
  property ``hw_qemu_guest_agent`` (as Nova saw it when the server was
  created) they raise ``QemuGuestAgentNotEnabled``; otherwise each call is
  appended to ``<data dir>/nova-quiesce.log`` (the data dir is the parent
  of ``minicloud_disk_dir``) as ``<UTC time> quiesce|unquiesce <instance
  uuid>``, so that a test can see that the freeze happened
  (``tools/minicloud quiesce-log``).  FakeDriver's own are no-ops that
  always succeed: Nova would take every server for frozen.

Volume-backed instances have no file: Nova's API snapshots their volumes
through Cinder and never calls the driver.  Volume attach and detach are
FakeDriver's (the Cinder attachments are real).

The compute node's UUID is kept in $state_path/compute_id (FakeDriver's
is random per process: nova-compute would refuse to start again).  The
FakeDriver keeps its instances in memory only; an instance Nova asks
about after a restart of nova-compute is taken as running (``_adopt``), so
servers stay ACTIVE across ``minicloud down``/``up``.

Test tooling, not a production driver.
"""

import os

from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import timeutils

from nova.compute import power_state
from nova.compute import task_states
from nova.compute import utils as compute_utils
from nova import exception
from nova.image import glance
from nova.virt import fake
from nova.virt import node

LOG = logging.getLogger(__name__)

#: file name, in the data dir, of the record of quiesce/unquiesce calls
QUIESCE_LOG = 'nova-quiesce.log'

CONF = cfg.CONF
CONF.register_opts([
    cfg.StrOpt('minicloud_disk_dir',
               default='/var/tmp/osc-backup-minicloud/data/nova-disks',
               help='Directory of the fake root disk files, '
                    '<instance uuid>.disk.'),
])


class DiskFakeDriver(fake.FakeDriver):
    """FakeDriver whose image-backed instances own a raw disk file."""

    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi, read_only=read_only)
        self._image_api = glance.API()

    def disk_path(self, instance):
        return os.path.join(CONF.minicloud_disk_dir, instance.uuid + '.disk')

    @staticmethod
    def quiesce_log():
        """Where quiesce and unquiesce calls are recorded."""
        return os.path.join(os.path.dirname(CONF.minicloud_disk_dir),
                            QUIESCE_LOG)

    def init_host(self, host):
        super().init_host(host)
        os.makedirs(CONF.minicloud_disk_dir, exist_ok=True)

    # FakeDriver's node UUID is random per process; a real driver's is
    # stable: $state_path/compute_id (written at the first start), so
    # nova-compute starts again after a restart
    def get_nodenames_by_uuid(self, refresh=False):
        return {node.get_local_node_uuid(): self._host}

    def get_available_resource(self, nodename):
        resources = super().get_available_resource(nodename)
        if resources:
            resources['uuid'] = node.get_local_node_uuid()
        return resources

    def _adopt(self, instance):
        """An instance Nova knows but this process does not (restart)."""
        if instance.uuid not in self.instances:
            LOG.info('adopting instance as running after a restart',
                     instance=instance)
            self.instances[instance.uuid] = fake.FakeInstance(
                instance.name, power_state.RUNNING, instance.uuid)

    # ---- lifecycle ------------------------------------------------------
    def spawn(self, context, instance, image_meta, injected_files,
              admin_password, allocations, network_info=None,
              block_device_info=None, power_on=True, accel_info=None):
        if instance.image_ref and not compute_utils.is_volume_backed_instance(
                context, instance):
            path = self.disk_path(instance)
            tmp = path + '.part'
            LOG.info('downloading image %s to %s', instance.image_ref, path,
                     instance=instance)
            try:
                self._image_api.download(context, instance.image_ref,
                                         dest_path=tmp)
                os.rename(tmp, path)
            except Exception:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        super().spawn(context, instance, image_meta, injected_files,
                      admin_password, allocations, network_info=network_info,
                      block_device_info=block_device_info, power_on=power_on,
                      accel_info=accel_info)

    def destroy(self, context, instance, network_info, block_device_info=None,
                destroy_disks=True, destroy_secrets=True):
        super().destroy(context, instance, network_info,
                        block_device_info=block_device_info,
                        destroy_disks=destroy_disks,
                        destroy_secrets=destroy_secrets)
        if destroy_disks:
            try:
                os.unlink(self.disk_path(instance))
                LOG.info('removed the disk file', instance=instance)
            except FileNotFoundError:
                pass

    def get_info(self, instance, use_cache=True):
        self._adopt(instance)
        return super().get_info(instance, use_cache=use_cache)

    def power_off(self, instance, timeout=0, retry_interval=0):
        self._adopt(instance)
        super().power_off(instance, timeout=timeout,
                          retry_interval=retry_interval)

    def power_on(self, context, instance, network_info,
                 block_device_info=None, accel_info=None, share_info=None):
        self._adopt(instance)
        super().power_on(context, instance, network_info,
                         block_device_info=block_device_info,
                         accel_info=accel_info, share_info=share_info)

    # ---- snapshot (as libvirt's, for a Glance image) --------------------
    def snapshot(self, context, instance, image_id, update_task_state):
        path = self.disk_path(instance)
        if not os.path.exists(path):
            raise exception.InstanceNotRunning(instance_id=instance.uuid)
        self._adopt(instance)
        snapshot = self._image_api.get(context, image_id)
        source = instance.image_meta
        metadata = {
            'status': 'active',
            'name': snapshot['name'],
            'disk_format': (source.disk_format
                            if source.obj_attr_is_set('disk_format')
                            else 'raw'),
            'container_format': (source.container_format
                                 if source.obj_attr_is_set('container_format')
                                 else 'bare'),
            'properties': {
                'kernel_id': instance.kernel_id,
                'image_location': 'snapshot',
                'image_state': 'available',
                'owner_id': instance.project_id,
                'ramdisk_id': instance.ramdisk_id,
            },
        }
        if instance.os_type:
            metadata['properties']['os_type'] = instance.os_type
        update_task_state(task_state=task_states.IMAGE_PENDING_UPLOAD)
        update_task_state(task_state=task_states.IMAGE_UPLOADING,
                          expected_state=task_states.IMAGE_PENDING_UPLOAD)
        LOG.info('uploading %s (%d bytes) to image %s', path,
                 os.path.getsize(path), image_id, instance=instance)
        with open(path, 'rb') as f:
            self._image_api.update(context, image_id, metadata, f)

    # ---- quiesce (libvirt's checks; the freeze is recorded) -------------
    def _set_quiesced(self, instance, image_meta, quiesced):
        # libvirt: _can_quiesce (virt_type kvm/qemu is implied here)
        if not image_meta.properties.get('hw_qemu_guest_agent', False):
            raise exception.QemuGuestAgentNotEnabled()
        self._adopt(instance)
        what = 'quiesce' if quiesced else 'unquiesce'
        LOG.info('%s (recorded in %s)', what, self.quiesce_log(),
                 instance=instance)
        line = '%s %s %s\n' % (timeutils.utcnow().isoformat(), what,
                               instance.uuid)
        fd = os.open(self.quiesce_log(),
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        with os.fdopen(fd, 'a') as f:
            f.write(line)

    def quiesce(self, context, instance, image_meta):
        """Freeze the guest file systems (recorded, see the docstring)."""
        self._set_quiesced(instance, image_meta, True)

    def unquiesce(self, context, instance, image_meta):
        """Thaw the guest file systems (recorded, see the docstring)."""
        self._set_quiesced(instance, image_meta, False)
