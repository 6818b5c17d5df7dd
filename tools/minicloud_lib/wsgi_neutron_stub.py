"""A stub of the Networking API for "no networks": NOT Neutron.

The minicloud has no Neutron.  Servers are created with ``--nic none``,
but Nova still reads from the network endpoint of the catalog (the ports
of a server for its security groups, the extensions list, ...).  This WSGI
app (gunicorn, port 9696) answers those reads with empty lists, the
version document at ``/``, and 404 for everything else (every write
included).  It checks no token.  Each request is logged (method, path,
query, answer) to its log, $MINICLOUD_DIR/log/neutron-stub.log.
"""
import json
import sys
import time

EMPTY = {
    'ports': 'ports',
    'networks': 'networks',
    'security-groups': 'security_groups',
    'extensions': 'extensions',
}


def _versions(host):
    return {'versions': [{
        'id': 'v2.0', 'status': 'CURRENT',
        'links': [{'rel': 'self', 'href': 'http://%s/v2.0/' % host}]}]}


def _answer(method, path, host):
    parts = [p for p in path.split('/') if p]
    if method not in ('GET', 'HEAD'):
        return 404, None
    if not parts:
        return 200, _versions(host)
    if parts[0] != 'v2.0':
        return 404, None
    if len(parts) == 1:
        return 200, {'resources': []}
    if len(parts) == 2:
        name = parts[1][:-5] if parts[1].endswith('.json') else parts[1]
        if name in EMPTY:
            return 200, {EMPTY[name]: []}
    return 404, None


def application(environ, start_response):
    method = environ['REQUEST_METHOD']
    path = environ.get('PATH_INFO', '/')
    host = environ.get('HTTP_HOST', '127.0.0.1:9696')
    status, body = _answer(method, path, host)
    if body is None:
        body = {'NeutronError': {
            'type': 'HTTPNotFound', 'detail': '',
            'message': 'minicloud has no networking: the neutron stub '
                       'answers only empty lists'}}
    data = json.dumps(body).encode()
    sys.stderr.write('%s neutron-stub %s %s%s -> %d\n' % (
        time.strftime('%Y-%m-%d %H:%M:%S'), method, path,
        '?' + environ['QUERY_STRING'] if environ.get('QUERY_STRING') else '',
        status))
    sys.stderr.flush()
    start_response('%d %s' % (status, 'OK' if status == 200 else
                              'Not Found'),
                   [('Content-Type', 'application/json'),
                    ('Content-Length', str(len(data)))])
    return [b'' if method == 'HEAD' else data]
