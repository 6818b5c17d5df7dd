"""Compute: Nova (API under gunicorn on port 8774, conductor, scheduler,
and nova-compute with the fake virt driver of ../novadriver.py that keeps
one real root disk file per image-backed server), Placement (port 8778)
and the neutron stub (port 9696, ../wsgi_neutron_stub.py: NOT Neutron);
their configuration, database schemas and cells, the compute host's
registration, the public flavors, and the server-disk and quiesce-log
commands.
"""

import os
import re
import time
import urllib.request

from minicloud_lib.control.client import Cloud, cloud_and_ref
from minicloud_lib.control.common import (
    DATA, ETC, HOST, REGION, VENV, Error, bin_, db_url, done, ini, log,
    mark_done, run, write_if_changed)
from minicloud_lib.control.identity import authtoken, service_auth
from minicloud_lib.control.infrastructure import mysql, reporting_service
from minicloud_lib.control.processes import Service, gunicorn, http_ok

# nova.conf graceful_shutdown_timeout; nova-compute waits up to
# manager_shutdown_timeout - 20 s of it for in-progress tasks (a snapshot
# upload, for instance) before its own cleanup
NOVA_GRACE = 60
NOVA_CONF = os.path.join(ETC, 'nova', 'nova.conf')
NOVA_DISKS = os.path.join(DATA, 'nova-disks')
#: quiesce/unquiesce calls of the fake driver (novadriver.QUIESCE_LOG in
#: the parent of NOVA_DISKS)
QUIESCE_LOG = os.path.join(DATA, 'nova-quiesce.log')


def nova_cmd(binary):
    return [bin_(binary), '--config-file', NOVA_CONF]


def nova_service(binary):
    """nova-conductor or nova-scheduler."""
    return reporting_service('nova', binary, lambda: nova_cmd(binary),
                             grace=NOVA_GRACE + 10)


def nova_manage(*args):
    return [bin_('nova-manage'), '--config-file', NOVA_CONF, *args]


# phase 3: after the conductor and Placement answer (it registers its
# compute node and resource provider at start)
NOVA_COMPUTE = reporting_service(
    'nova', 'nova-compute', lambda: [
        bin_('python'), '-m', 'minicloud_lib.nova_compute', '--config-file',
        NOVA_CONF],
    grace=NOVA_GRACE + 10, phase=3)

SERVICES = [
    Service('placement', lambda: gunicorn('wsgi_placement', 8778),
            ports=(8778,), health=lambda s: http_ok(8778)),
    Service('neutron-stub', lambda: gunicorn('wsgi_neutron_stub', 9696),
            ports=(9696,), health=lambda s: http_ok(9696)),
    Service('nova-api', lambda: gunicorn('wsgi_nova', 8774),
            ports=(8774,), health=lambda s: http_ok(8774)),
    nova_service('nova-conductor'),
    nova_service('nova-scheduler'),
    NOVA_COMPUTE,
]


def write_config():
    """placement.conf, nova.conf and Nova's api-paste.ini."""
    # Placement
    write_if_changed(os.path.join(ETC, 'placement', 'placement.conf'), ini({
        'DEFAULT': {'use_stderr': True},
        'placement_database': {'connection': db_url('placement')},
        'api': {'auth_strategy': 'keystone'},
        'keystone_authtoken': authtoken('placement'),
    }))

    # Nova: one cell (cell1) besides cell0, one compute host `minicloud`
    ndir = os.path.join(ETC, 'nova')
    ndata = os.path.join(DATA, 'nova')
    for d in (ndata, os.path.join(ndata, 'instances'), NOVA_DISKS):
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(VENV, 'etc', 'nova', 'api-paste.ini')) as f:
        write_if_changed(os.path.join(ndir, 'api-paste.ini'), f.read())
    write_if_changed(NOVA_CONF, ini({
        'DEFAULT': {
            'host': 'minicloud',   # stable across machines and clones
            'my_ip': HOST,
            'my_block_storage_ip': HOST,
            # state_path holds compute_id, the compute node's UUID
            'state_path': ndata,
            'instances_path': os.path.join(ndata, 'instances'),
            'use_stderr': True,
            'transport_url': 'rabbit://guest:guest@%s:5672/' % HOST,
            'compute_driver': 'minicloud_lib.novadriver.DiskFakeDriver',
            'minicloud_disk_dir': NOVA_DISKS,
            'graceful_shutdown_timeout': NOVA_GRACE,
            'manager_shutdown_timeout': NOVA_GRACE - 15,
            'report_interval': 5,
            'service_down_time': 30,
            # no Neutron: do not wait for network-vif-plugged events
            'vif_plugging_is_fatal': False,
            'vif_plugging_timeout': 0,
        },
        'api': {'auth_strategy': 'keystone'},
        'api_database': {'connection': db_url('nova_api')},
        'database': {'connection': db_url('nova')},
        'keystone_authtoken': authtoken('nova'),
        # Nova's calls to Cinder (attachment update/delete of a server's
        # volume) and Glance carry a service token besides the user's
        'service_user': dict(service_auth('nova'),
                             send_service_user_token=True),
        'placement': service_auth('nova'),
        'cinder': dict(service_auth('nova'), os_region_name=REGION),
        'glance': {'region_name': REGION},
        # the stub of tools/minicloud_lib/wsgi_neutron_stub.py, found
        # through the catalog (type network)
        'neutron': dict(service_auth('nova'), valid_interfaces='public'),
        'conductor': {'workers': 1},
        'scheduler': {'workers': 1},
        'quota': {'instances': 100, 'cores': 200, 'ram': 204800},
        'vnc': {'enabled': False},
        'oslo_concurrency': {'lock_path': os.path.join(ndata, 'locks')},
        'oslo_messaging_notifications': {'driver': 'noop'},
    }))


def db_sync_steps():
    return {
        'db-placement': [bin_('placement-manage'), '--config-file',
                         os.path.join(ETC, 'placement', 'placement.conf'),
                         'db', 'sync'],
        # cells v2, in this order: api DB, cell0 mapping, cell1 (the
        # [database] of nova.conf; exit 2: it exists already), then the
        # schema of cell1 and cell0.  Hosts are discovered once
        # nova-compute runs (nova_discover_hosts).
        'db-nova': [
            nova_manage('api_db', 'sync'),
            nova_manage('cell_v2', 'map_cell0', '--database_connection',
                        db_url('nova_cell0')),
            (nova_manage('cell_v2', 'create_cell', '--name', 'cell1'),
             (0, 2)),
            nova_manage('db', 'sync')],
    }


# Public flavors: (name, id, vcpus, ram MiB, disk GiB)
FLAVORS = [('m1.tiny', '1', 1, 512, 1), ('m1.small', '2', 1, 512, 2)]


def nova_flavors():
    if done('nova-flavors'):
        return
    log('creating flavors %s' % ', '.join(f[0] for f in FLAVORS))
    c = Cloud('minicloud-admin').login()
    base = c.endpoint('compute')
    have = {f['name'] for f in c.request(
        'GET', base + '/flavors?is_public=None')['flavors']}
    for name, fid, vcpus, ram, disk in FLAVORS:
        if name not in have:
            c.request('POST', base + '/flavors', {'flavor': {
                'name': name, 'id': fid, 'vcpus': vcpus, 'ram': ram,
                'disk': disk, 'os-flavor-access:is_public': True}})
    mark_done('nova-flavors')


def nova_host_ready():
    """nova-compute's node is in cell1 and its resource provider in
    Placement, and the host is mapped to cell1."""
    p = mysql("SELECT (SELECT COUNT(*) FROM nova.compute_nodes WHERE "
              "deleted=0 AND host='minicloud'), (SELECT COUNT(*) FROM "
              "placement.resource_providers WHERE name='minicloud'), "
              "(SELECT COUNT(*) FROM nova_api.host_mappings WHERE "
              "host='minicloud')", timeout=10)
    if p.returncode != 0:
        raise Error('database: %s' % p.stderr.strip()[:300])
    return [int(x) > 0 for x in p.stdout.split()]


def nova_discover_hosts(timeout=120):
    """Map the compute host to cell1 once it has registered (the
    scheduler finds no host before)."""
    deadline = time.time() + timeout
    while True:
        node, provider, mapped = nova_host_ready()
        if node and provider:
            break
        if time.time() > deadline:
            raise Error('nova-compute registered no compute node%s in %ds; '
                        'see %s' % ('' if node else ' / resource provider',
                                    timeout, NOVA_COMPUTE.logfile))
        time.sleep(0.5)
    if not mapped:
        log('mapping the compute host to cell1 (discover_hosts)')
        run(nova_manage('cell_v2', 'discover_hosts'))


def _find_server(c, ref):
    """A server by ID or exact name, as the cloud c shows it."""
    base = c.endpoint('compute')
    srv = c.request('GET', base + '/servers/' + urllib.request.quote(ref),
                    ok=(200, 404))
    if srv and 'server' in srv:
        srv = srv['server']
    else:
        # name is a regular expression for Nova
        found = c.request('GET', base + '/servers/detail?name=' +
                          urllib.request.quote('^%s$' % re.escape(ref)))[
                              'servers']
        found = [s for s in found if s['name'] == ref]
        if len(found) != 1:
            raise Error('%d servers match %r' % (len(found), ref))
        srv = found[0]
    return srv


def cmd_server_disk(args):
    """The fake root disk file of an image-backed server (novadriver)."""
    srv = _find_server(*cloud_and_ref(args, 'SERVER'))
    path = os.path.join(NOVA_DISKS, srv['id'] + '.disk')
    if not os.path.exists(path):
        raise Error('no disk file for server %s (status %s; a volume-backed '
                    'server has none)' % (srv['id'], srv['status']))
    print(path)
    return 0


def cmd_quiesce_log(args):
    """The quiesce/unquiesce calls the fake driver recorded for a server
    (``<UTC time> quiesce|unquiesce <server id>``, oldest first)."""
    srv = _find_server(*cloud_and_ref(args, 'SERVER'))
    try:
        with open(QUIESCE_LOG) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        if line.split()[-1:] == [srv['id']]:
            print(line)
    return 0
