"""A tiny REST client (stdlib only) for the cloud: logs in as one of the
two clouds.yaml identities and calls the APIs of the catalog.  Used by
the one-time setup steps (users, endpoints, volume types, flavors) and by
attach, detach, volume-path and server-disk.
"""

import json
import urllib.error
import urllib.request

from minicloud_lib.control.common import KEYSTONE_URL, Error, get_secrets


class Cloud:
    def __init__(self, name='minicloud'):
        s = get_secrets()
        if name == 'minicloud':
            self.user, self.project, self.password = 'demo', 'demo', \
                s['member']
        elif name == 'minicloud-admin':
            self.user, self.project, self.password = 'admin', 'admin', \
                s['admin']
        else:
            raise Error('unknown cloud %r (minicloud or minicloud-admin)'
                        % name)
        self.token = None
        self.catalog = []
        self.project_id = None

    def login(self):
        body = {'auth': {
            'identity': {'methods': ['password'], 'password': {'user': {
                'name': self.user, 'domain': {'name': 'Default'},
                'password': self.password}}},
            'scope': {'project': {'name': self.project,
                                  'domain': {'name': 'Default'}}}}}
        req = urllib.request.Request(
            KEYSTONE_URL + '/v3/auth/tokens', data=json.dumps(body).encode(),
            headers={'Content-Type': 'application/json'}, method='POST')
        with urllib.request.urlopen(req, timeout=30) as r:
            self.token = r.headers['X-Subject-Token']
            data = json.load(r)['token']
        self.catalog = data.get('catalog', [])
        self.project_id = data['project']['id']
        return self

    def endpoint(self, stype):
        for svc in self.catalog:
            if svc['type'] == stype:
                for ep in svc['endpoints']:
                    if ep['interface'] == 'public':
                        return ep['url']
        raise Error('no %s endpoint in the catalog' % stype)

    def request(self, method, url, body=None, headers=None, ok=(200, 201, 202,
                                                                 204)):
        if not url.startswith('http'):
            url = KEYSTONE_URL + url
        h = {'X-Auth-Token': self.token, 'Accept': 'application/json'}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h['Content-Type'] = 'application/json'
        h.update(headers or {})
        req = urllib.request.Request(url, data=data, headers=h, method=method)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            raw = e.read()
            status = e.code
        if status not in ok:
            raise Error('%s %s -> HTTP %d: %s' % (
                method, url, status, raw[:500].decode(errors='replace')))
        return json.loads(raw) if raw else None

    # Keystone get-or-create helpers
    def find(self, coll, name, key=None, **filters):
        q = '&'.join('%s=%s' % kv for kv in dict(name=name, **filters).items())
        items = self.request('GET', '/v3/%s?%s' % (coll, q))[key or coll]
        return items[0] if items else None

    def ensure(self, coll, single, name, **attrs):
        found = self.find(coll, name)
        if found:
            return found
        attrs['name'] = name
        return self.request('POST', '/v3/' + coll, {single: attrs})[single]


def cloud_and_ref(args, what):
    """[--cloud NAME] REF -> (logged-in Cloud, REF)."""
    cloud = 'minicloud'
    rest = []
    it = iter(args)
    for a in it:
        if a == '--cloud':
            cloud = next(it, None)
        elif a.startswith('--cloud='):
            cloud = a.split('=', 1)[1]
        else:
            rest.append(a)
    if len(rest) != 1 or not cloud:
        raise Error('expected: [--cloud NAME] %s' % what)
    return Cloud(cloud).login(), rest[0]
