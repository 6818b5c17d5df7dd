"""Installation: the Debian packages the cloud needs (MariaDB, RabbitMQ,
memcached, qemu-utils, ...) and the cloud's own virtualenv,
$MINICLOUD_DIR/venv, with the OpenStack services from PyPI installed
against upper-constraints.txt (with CONSTRAINT_OVERRIDES).
"""

import hashlib
import os
import shutil
import subprocess
import sys

from minicloud_lib.control.common import (
    REPO, STATE, VENV, Error, bin_, log, run, write_if_changed)
from minicloud_lib.control.services import SERVICES

APT_PACKAGES = ['mariadb-server', 'rabbitmq-server', 'qemu-utils',
                'memcached', 'cryptsetup-bin', 'curl']
APT_PROBES = ['/usr/sbin/mariadbd', '/usr/bin/mariadb-install-db',
              '/usr/lib/rabbitmq/bin/rabbitmq-server', '/usr/bin/qemu-img',
              '/usr/bin/memcached', '/usr/sbin/cryptsetup', '/usr/bin/curl']
PIP_PACKAGES = ['keystone==30.0.0', 'glance==33.0.0', 'cinder==29.0.0',
                'barbican==23.0.0', 'nova==34.0.0',
                'openstack-placement==16.0.0',
                'PyMySQL', 'gunicorn', 'python-memcached']
CONSTRAINTS = os.path.join(REPO, 'upper-constraints.txt')
# nova 34.0.0 requires newer releases of these than upper-constraints.txt
# pins (keystoneauth1>=5.16.0, oslo.versionedobjects>=3.12.0): the cloud's
# venv (only it; the plugin's .venv keeps the file's pins) is installed with
# upper-constraints.txt where these lines are replaced.
CONSTRAINT_OVERRIDES = {'keystoneauth1': '5.16.0',
                        'oslo.versionedobjects': '3.12.0'}


def ensure_apt():
    missing = [p for p in APT_PROBES if not os.path.exists(p)]
    if not missing:
        return
    log('installing Debian packages (%s missing)' % ', '.join(missing))
    env = {'DEBIAN_FRONTEND': 'noninteractive'}
    run(['apt-get', 'update', '-q'], env=env, timeout=600)
    run(['apt-get', 'install', '-y', '-q', '--no-install-recommends',
         *APT_PACKAGES], env=env, timeout=900)


def cloud_constraints():
    """upper-constraints.txt with CONSTRAINT_OVERRIDES, as a file in the
    state dir; returns its path."""
    if not os.path.exists(CONSTRAINTS):
        raise Error('%s is missing' % CONSTRAINTS)
    lines = []
    with open(CONSTRAINTS) as f:
        for line in f:
            name = line.split('===', 1)[0].strip()
            if name not in CONSTRAINT_OVERRIDES:
                lines.append(line.rstrip('\n'))
    lines += ['%s===%s' % kv for kv in sorted(CONSTRAINT_OVERRIDES.items())]
    path = os.path.join(STATE, 'constraints.txt')
    write_if_changed(path, '\n'.join(lines) + '\n')
    return path


def venv_python_works():
    try:
        return subprocess.run([bin_('python'), '-c', ''],
                              timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_venv():
    constraints = cloud_constraints()
    with open(constraints, 'rb') as f:
        want = hashlib.sha256(
            f.read() + ' '.join(PIP_PACKAGES).encode()).hexdigest()
    stamp = os.path.join(VENV, '.minicloud-installed')
    try:
        with open(stamp) as f:
            have = f.read().strip()
    except OSError:
        have = None
    works = have is not None and venv_python_works()
    if have == want and works:
        return
    if works:
        # other packages or constraints: pip changes only what differs
        # (services already running keep their code until restarted)
        log('updating the cloud virtualenv in %s' % VENV)
    elif have is not None:
        # built by a python that is gone
        running = [svc.name for svc in SERVICES if svc.pid() is not None]
        if running:
            log('warning: the cloud virtualenv is broken, but %s run '
                'from it: `down` then `up` rebuilds it' % ', '.join(running))
            return
        log('rebuilding the cloud virtualenv')
        shutil.rmtree(VENV)
    else:
        log('creating the cloud virtualenv in %s (about a minute)' % VENV)
    if not os.path.exists(bin_('python')):
        run([sys.executable, '-m', 'venv', VENV])
    run([bin_('pip'), 'install', '-q', '-c', constraints, *PIP_PACKAGES],
        timeout=1800)
    with open(stamp, 'w') as f:
        f.write(want + '\n')
