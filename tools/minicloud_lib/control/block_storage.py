"""Block storage: Cinder (API under gunicorn on port 8776, scheduler,
volume with the file-backed driver of ../filedriver.py, backup with the
posix driver), its configuration, database schema and volume types
(``file``, and ``luks`` encrypted with Barbican keys); and the commands
that reach into it: attach, detach, volume-path.
"""

import os
import time
import urllib.request

from minicloud_lib.control.client import Cloud, cloud_and_ref
from minicloud_lib.control.common import (
    DATA, ETC, HOST, KEYSTONE_URL, VENV, Error, bin_, db_url, done, ini, log,
    mark_done, write_if_changed)
from minicloud_lib.control.identity import authtoken, service_auth
from minicloud_lib.control.infrastructure import reporting_service
from minicloud_lib.control.processes import Service, gunicorn, http_ok

# cinder.conf graceful_shutdown_timeout: a stopped cinder-volume/-backup
# finishes what it is doing (other tests may be running); queued requests
# wait in RabbitMQ for the next start.
CINDER_GRACE = 60


def cinder_cmd(binary):
    return [bin_(binary), '--config-file',
            os.path.join(ETC, 'cinder', 'cinder.conf')]


def cinder_service(binary):
    """cinder-scheduler, cinder-volume or cinder-backup."""
    return reporting_service('cinder', binary, lambda: cinder_cmd(binary),
                             grace=CINDER_GRACE + 10)


SERVICES = [
    Service('cinder-api', lambda: gunicorn('wsgi_cinder', 8776),
            ports=(8776,), health=lambda s: http_ok(8776)),
    cinder_service('cinder-scheduler'),
    cinder_service('cinder-volume'),
    cinder_service('cinder-backup'),
]


def write_config():
    cdir = os.path.join(ETC, 'cinder')
    cdata = os.path.join(DATA, 'cinder')
    for d in ('volumes', 'backups', 'conversion', 'locks'):
        os.makedirs(os.path.join(cdata, d), exist_ok=True)
    cconf = os.path.join(cdir, 'cinder.conf')
    privsep = '%s --config-file %s' % (bin_('privsep-helper'), cconf)
    write_if_changed(cconf, ini({
        'DEFAULT': {
            'host': 'minicloud',   # stable across machines and clones
            'my_ip': HOST,
            'state_path': cdata,
            'use_stderr': True,
            'transport_url': 'rabbit://guest:guest@%s:5672/' % HOST,
            'auth_strategy': 'keystone',
            'enabled_backends': 'file',
            'default_volume_type': 'file',
            'glance_api_servers': 'http://%s:9292' % HOST,
            'backup_driver': 'cinder.backup.drivers.posix.PosixBackupDriver',
            'backup_posix_path': os.path.join(cdata, 'backups'),
            'image_conversion_dir': os.path.join(cdata, 'conversion'),
            'api_paste_config': os.path.join(VENV, 'etc', 'cinder',
                                             'api-paste.ini'),
            'resource_query_filters_file': os.path.join(
                VENV, 'etc', 'cinder', 'resource_filters.json'),
            'rootwrap_config': os.path.join(VENV, 'etc', 'cinder',
                                            'rootwrap.conf'),
            'graceful_shutdown_timeout': CINDER_GRACE,
            'report_interval': 5,
            # a stopped service shows `down` after 30 s instead of 60
            'service_down_time': 30,
            'periodic_interval': 30,
            # tests run in parallel: room for many volumes
            'quota_volumes': 200, 'quota_snapshots': 200,
            'quota_backups': 200, 'quota_gigabytes': 5000,
            'quota_backup_gigabytes': 5000,
        },
        'file': {
            'volume_driver': 'minicloud_lib.filedriver.FileDriver',
            'volume_backend_name': 'file',
            'file_volume_dir': os.path.join(cdata, 'volumes'),
        },
        'database': {'connection': db_url('cinder')},
        'keystone_authtoken': authtoken('cinder'),
        'key_manager': {'backend': 'barbican'},
        'barbican': {'barbican_endpoint': 'http://%s:9311' % HOST,
                     'auth_endpoint': KEYSTONE_URL + '/v3'},
        'service_user': {'send_service_user_token': False},
        # Cinder asks Nova about a server's volume attachments (deleting an
        # attachment of a server without Nova's service token)
        'nova': dict(service_auth('cinder'), interface='public'),
        'oslo_concurrency': {'lock_path': os.path.join(cdata, 'locks')},
        'privsep_osbrick': {'helper_command': privsep},
        'cinder_sys_admin': {'helper_command': privsep},
    }))


def db_sync_steps():
    return {
        'db-cinder': [bin_('cinder-manage'), '--config-file',
                      os.path.join(ETC, 'cinder', 'cinder.conf'),
                      'db', 'sync'],
    }


def cinder_types():
    if done('cinder-types'):
        return
    log('creating volume types file and luks')
    c = Cloud('minicloud-admin').login()
    base = c.endpoint('block-storage')
    mv = {'OpenStack-API-Version': 'volume 3.0'}
    types = {t['name']: t for t in c.request(
        'GET', base + '/types?is_public=None', headers=mv)['volume_types']}
    for name in ('file', 'luks'):
        if name not in types:
            types[name] = c.request('POST', base + '/types', {'volume_type': {
                'name': name, 'os-volume-type-access:is_public': True,
                'description': 'minicloud file backend' + (
                    ', LUKS encrypted' if name == 'luks' else ''),
                'extra_specs': {'volume_backend_name': 'file'}}},
                headers=mv)['volume_type']
    luks = types['luks']['id']
    enc = c.request('GET', base + '/types/%s/encryption' % luks, headers=mv)
    if not enc or not enc.get('provider'):
        c.request('POST', base + '/types/%s/encryption' % luks, {
            'encryption': {'provider': 'luks', 'cipher': 'aes-xts-plain64',
                           'key_size': 256, 'control_location': 'front-end'}},
            headers=mv)
    mark_done('cinder-types')


def _cloud_and_volume(args):
    c, ref = cloud_and_ref(args, 'VOLUME')
    base = c.endpoint('block-storage')
    mv = {'OpenStack-API-Version': 'volume 3.54'}
    vol = c.request('GET', base + '/volumes/' + urllib.request.quote(ref),
                    headers=mv, ok=(200, 404))
    if vol and 'volume' in vol:
        return c, base, vol['volume']
    found = c.request('GET', base + '/volumes/detail?name=' +
                      urllib.request.quote(ref), headers=mv)['volumes']
    found = [v for v in found if v['name'] == ref]
    if len(found) != 1:
        raise Error('%d volumes match %r' % (len(found), ref))
    return c, base, found[0]


MV_ATTACH = {'OpenStack-API-Version': 'volume 3.54'}


def cmd_attach(args):
    c, base, vol = _cloud_and_volume(args)
    connector = {'initiator': 'iqn.2004-10.org.openstack:minicloud',
                 'ip': HOST, 'host': 'minicloud', 'platform': 'x86_64',
                 'os_type': 'linux', 'multipath': False,
                 'mountpoint': '/dev/minicloud'}
    att = c.request('POST', base + '/attachments', {'attachment': {
        'volume_uuid': vol['id'], 'connector': connector, 'mode': 'rw'}},
        headers=MV_ATTACH)['attachment']
    c.request('POST', base + '/attachments/%s/action' % att['id'],
              {'os-complete': None}, headers=MV_ATTACH)
    for _ in range(120):
        v = c.request('GET', base + '/volumes/' + vol['id'],
                      headers=MV_ATTACH)['volume']
        if v['status'] == 'in-use':
            print(att['id'])
            return 0
        if v['status'].startswith('error'):
            break
        time.sleep(0.5)
    raise Error('volume %s is %s, not in-use' % (vol['id'], v['status']))


def cmd_detach(args):
    c, base, vol = _cloud_and_volume(args)
    atts = c.request('GET', base + '/attachments?volume_id=' + vol['id'],
                     headers=MV_ATTACH)['attachments']
    if not atts:
        raise Error('volume %s has no attachments' % vol['id'])
    for att in atts:
        c.request('DELETE', base + '/attachments/' + att['id'],
                  headers=MV_ATTACH)
    for _ in range(120):
        v = c.request('GET', base + '/volumes/' + vol['id'],
                      headers=MV_ATTACH)['volume']
        if v['status'] == 'available':
            return 0
        time.sleep(0.5)
    raise Error('volume %s is %s, not available' % (vol['id'], v['status']))


def cmd_volume_path(args):
    _, _, vol = _cloud_and_volume(args)
    path = os.path.join(DATA, 'cinder', 'volumes', 'volume-' + vol['id'])
    if not os.path.exists(path):
        raise Error('no backend file for volume %s (status %s)' % (
            vol['id'], vol['status']))
    print(path)
    return 0
