"""Identity: Keystone (under gunicorn, port 5000), its configuration and
bootstrap, the service users and the catalog every other service is
found through, the keystoneauth options services use to reach Keystone,
and the clouds.yaml users get.
"""

import hashlib
import json
import os

from minicloud_lib.control.client import Cloud
from minicloud_lib.control.common import (
    CLOUDS_YAML, ETC, HOST, KEYSTONE_URL, REGION, bin_, db_url, done,
    get_secrets, ini, log, mark_done, run, write_if_changed)
from minicloud_lib.control.processes import Service, gunicorn, http_ok

SERVICES = [
    Service('keystone', lambda: gunicorn('wsgi_keystone', 5000),
            ports=(5000,), phase=1, health=lambda s: http_ok(5000, '/v3')),
]

# Catalog: (service name, type, port, path).  `network` is the stub
# (tools/minicloud_lib/wsgi_neutron_stub.py), not Neutron.
CATALOG = [
    ('glance', 'image', 9292, ''),
    ('cinder', 'block-storage', 8776, '/v3/$(project_id)s'),
    ('cinderv3', 'volumev3', 8776, '/v3/$(project_id)s'),
    ('barbican', 'key-manager', 9311, ''),
    ('nova', 'compute', 8774, '/v2.1'),
    ('placement', 'placement', 8778, ''),
    ('neutron', 'network', 9696, ''),
]
SERVICE_USERS = ['glance', 'cinder', 'barbican', 'nova', 'placement']


def service_auth(user):
    """keystoneauth options of a service user (project service)."""
    return {
        'auth_url': KEYSTONE_URL,
        'auth_type': 'password',
        'user_domain_name': 'Default',
        'project_domain_name': 'Default',
        'project_name': 'service',
        'username': user,
        'password': get_secrets()['service'],
        'region_name': REGION,
    }


def authtoken(user):
    return dict(service_auth(user), www_authenticate_uri=KEYSTONE_URL,
                memcached_servers='%s:11211' % HOST)


def write_config():
    kdir = os.path.join(ETC, 'keystone')
    write_if_changed(os.path.join(kdir, 'keystone.conf'), ini({
        'DEFAULT': {'use_stderr': True},
        'database': {'connection': db_url('keystone')},
        'token': {'provider': 'fernet', 'expiration': 14400},
        'fernet_tokens': {'key_repository': os.path.join(kdir, 'fernet-keys')},
        'fernet_receipts': {
            'key_repository': os.path.join(kdir, 'fernet-keys')},
        'credential': {
            'key_repository': os.path.join(kdir, 'credential-keys')},
        # cheap password hashes: every CLI call authenticates
        'identity': {'password_hash_rounds': 4},
        'cache': {'enabled': True, 'backend': 'dogpile.cache.memcached',
                  'memcache_servers': '%s:11211' % HOST},
    }))


def db_sync_steps():
    kconf = os.path.join(ETC, 'keystone', 'keystone.conf')
    return {
        'db-keystone': [bin_('keystone-manage'), '--config-file', kconf,
                        'db_sync'],
    }


def keystone_setup():
    kdir = os.path.join(ETC, 'keystone')
    kconf = os.path.join(kdir, 'keystone.conf')
    for repo, cmd in (('fernet-keys', 'fernet_setup'),
                      ('credential-keys', 'credential_setup')):
        if not os.path.exists(os.path.join(kdir, repo, '0')):
            run([bin_('keystone-manage'), '--config-file', kconf, cmd,
                 '--keystone-user', 'root', '--keystone-group', 'root'])
    if not done('keystone-bootstrap'):
        log('bootstrapping keystone')
        url = KEYSTONE_URL + '/v3'
        run([bin_('keystone-manage'), '--config-file', kconf, 'bootstrap',
             '--bootstrap-password', get_secrets()['admin'],
             '--bootstrap-username', 'admin',
             '--bootstrap-project-name', 'admin',
             '--bootstrap-role-name', 'admin',
             '--bootstrap-service-name', 'keystone',
             '--bootstrap-region-id', REGION,
             '--bootstrap-admin-url', url,
             '--bootstrap-internal-url', url,
             '--bootstrap-public-url', url])
        mark_done('keystone-bootstrap')


def keystone_resources_step():
    """The done marker names what was created: a state dir set up before a
    service was added gets its user and endpoints on the next `up`."""
    return 'keystone-resources-' + hashlib.sha256(json.dumps(
        [SERVICE_USERS, CATALOG]).encode()).hexdigest()[:12]


def keystone_resources():
    if done(keystone_resources_step()):
        return
    log('creating projects, users, services and endpoints')
    c = Cloud('minicloud-admin').login()
    s = get_secrets()
    default = 'default'
    roles = {r: c.ensure('roles', 'role', r)['id']
             for r in ('admin', 'member', 'reader', 'service', 'creator')}
    service = c.ensure('projects', 'project', 'service', domain_id=default)
    demo = c.ensure('projects', 'project', 'demo', domain_id=default,
                    description='minicloud member project')

    def grant(project, user, role):
        c.request('PUT', '/v3/projects/%s/users/%s/roles/%s' % (
            project['id'], user['id'], roles[role]))

    for name in SERVICE_USERS:
        u = c.ensure('users', 'user', name, domain_id=default,
                     password=s['service'])
        grant(service, u, 'admin')
        grant(service, u, 'service')
    demo_user = c.ensure('users', 'user', 'demo', domain_id=default,
                         password=s['member'], default_project_id=demo['id'])
    grant(demo, demo_user, 'member')
    for name, stype, port, path in CATALOG:
        found = [x for x in c.request('GET', '/v3/services?type=' + stype)[
            'services'] if x['name'] == name]
        svc = found[0] if found else c.request('POST', '/v3/services', {
            'service': {'name': name, 'type': stype}})['service']
        have = {e['interface'] for e in c.request(
            'GET', '/v3/endpoints?service_id=' + svc['id'])['endpoints']}
        for iface in ('public', 'internal', 'admin'):
            if iface not in have:
                c.request('POST', '/v3/endpoints', {'endpoint': {
                    'service_id': svc['id'], 'interface': iface,
                    'region_id': REGION,
                    'url': 'http://%s:%d%s' % (HOST, port, path)}})
    mark_done(keystone_resources_step())


def write_clouds_yaml():
    s = get_secrets()

    def cloud(name, user, project, password):
        return '\n'.join([
            '  %s:' % name,
            '    auth:',
            '      auth_url: %s/v3' % KEYSTONE_URL,
            '      username: %s' % user,
            '      password: %s' % password,
            '      project_name: %s' % project,
            '      user_domain_name: Default',
            '      project_domain_name: Default',
            '    region_name: %s' % REGION,
            '    identity_api_version: 3',
            '    interface: public',
        ])
    write_if_changed(CLOUDS_YAML, '\n'.join([
        '# written by tools/minicloud; the cloud listens on 127.0.0.1 only',
        'clouds:',
        cloud('minicloud', 'demo', 'demo', s['member']),
        cloud('minicloud-admin', 'admin', 'admin', s['admin']),
        '']), mode=0o600)
