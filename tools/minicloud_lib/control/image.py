"""Image service: Glance (under gunicorn, port 9292) with a filesystem
store in the state dir and Barbican as key manager, its configuration and
database schema.
"""

import os

from minicloud_lib.control.common import (
    DATA, ETC, HOST, KEYSTONE_URL, VENV, bin_, db_url, ini, write_if_changed)
from minicloud_lib.control.identity import authtoken
from minicloud_lib.control.processes import Service, gunicorn, http_ok

SERVICES = [
    # an upload or download holds a thread for its whole transfer: with
    # 4 threads, 4 uploads at once (backup run --parallel 4, parallel
    # tests) queued every other request past a client's 60 s API timeout
    Service('glance', lambda: gunicorn('wsgi_glance', 9292, threads=16),
            ports=(9292,), health=lambda s: http_ok(9292)),
]


def write_config():
    gdir = os.path.join(ETC, 'glance')
    gdata = os.path.join(DATA, 'glance')
    for d in ('images', 'staging', 'tasks'):
        os.makedirs(os.path.join(gdata, d), exist_ok=True)
    write_if_changed(os.path.join(gdir, 'glance-api.conf'), ini({
        'DEFAULT': {'enabled_backends': 'fs:file', 'use_stderr': True,
                    'bind_host': HOST, 'bind_port': 9292,
                    'worker_self_reference_url': 'http://%s:9292' % HOST},
        'database': {'connection': db_url('glance')},
        'glance_store': {'default_backend': 'fs'},
        'fs': {'filesystem_store_datadir': os.path.join(gdata, 'images')},
        'os_glance_staging_store': {
            'filesystem_store_datadir': os.path.join(gdata, 'staging')},
        'os_glance_tasks_store': {
            'filesystem_store_datadir': os.path.join(gdata, 'tasks')},
        'keystone_authtoken': authtoken('glance'),
        # deletes the Barbican key Cinder cloned for an encrypted volume's
        # image (cinder_encryption_key_deletion_policy) with the image
        'key_manager': {'backend': 'barbican'},
        'barbican': {'barbican_endpoint': 'http://%s:9311' % HOST,
                     'auth_endpoint': KEYSTONE_URL + '/v3'},
        'paste_deploy': {
            'flavor': 'keystone',
            'config_file': os.path.join(VENV, 'etc', 'glance',
                                        'glance-api-paste.ini')},
        'oslo_concurrency': {'lock_path': os.path.join(gdata, 'locks')},
    }))


def db_sync_steps():
    return {
        'db-glance': [bin_('glance-manage'), '--config-file',
                      os.path.join(ETC, 'glance', 'glance-api.conf'),
                      'db_sync'],
    }
