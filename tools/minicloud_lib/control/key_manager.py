"""Key manager: Barbican (under gunicorn, port 9311) with the
simple_crypto plugin (its KEK in secrets.json), its configuration and
database schema.  Cinder and Glance use it for the keys of encrypted
volumes and of their images.
"""

import contextlib
import os

from minicloud_lib.control.common import (
    ETC, HOST, VENV, bin_, db_url, get_secrets, ini, write_if_changed)
from minicloud_lib.control.identity import authtoken
from minicloud_lib.control.processes import Service, gunicorn, http_ok

# Barbican (and its simple_crypto plugin) read their configuration from
# $HOME/.barbican/barbican.conf only: its processes get this HOME, where
# that file is a link to etc/barbican/barbican.conf.
HOME = os.path.join(ETC, 'barbican-home')

SERVICES = [
    Service('barbican', lambda: gunicorn('wsgi_barbican', 9311),
            ports=(9311,), env={'HOME': HOME},
            health=lambda s: http_ok(9311)),
]


def write_config():
    s = get_secrets()
    bdir = os.path.join(ETC, 'barbican')
    bconf = os.path.join(bdir, 'barbican.conf')
    write_if_changed(bconf, ini({
        'DEFAULT': {'host_href': 'http://%s:9311' % HOST, 'use_stderr': True},
        'database': {'connection': db_url('barbican')},
        'secretstore': {'enabled_secretstore_plugins': 'store_crypto'},
        'crypto': {'enabled_crypto_plugins': 'simple_crypto'},
        'simple_crypto_plugin': {'kek': s['kek']},
        'keystone_authtoken': authtoken('barbican'),
    }), mode=0o600)
    with open(os.path.join(VENV, 'etc', 'barbican',
                           'barbican-api-paste.ini')) as f:
        write_if_changed(os.path.join(bdir, 'barbican-api-paste.ini'),
                         f.read())
    home = os.path.join(HOME, '.barbican')
    os.makedirs(home, exist_ok=True)
    link = os.path.join(home, 'barbican.conf')
    if not os.path.islink(link) or os.readlink(link) != bconf:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        os.symlink(bconf, link)


def db_sync_steps():
    """Run with HOME (see services.db_syncs)."""
    return {
        'db-barbican': [bin_('barbican-manage'), 'db', 'upgrade',
                        '--db-url', db_url('barbican')],
    }
