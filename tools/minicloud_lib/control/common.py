"""What every part of tools/minicloud shares: the state dir's layout,
addresses, the environment marker of the cloud's processes, the secrets,
logging and small file and command helpers.
"""

import base64
import json
import os
import secrets
import subprocess
import sys
import time

# tools/ (this file is tools/minicloud_lib/control/common.py)
TOOLS = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
REPO = os.path.dirname(TOOLS)
STATE = os.path.abspath(
    os.environ.get('MINICLOUD_DIR') or '/var/tmp/osc-backup-minicloud')
VENV = os.path.join(STATE, 'venv')
ETC = os.path.join(STATE, 'etc')
DATA = os.path.join(STATE, 'data')
LOGS = os.path.join(STATE, 'log')
RUN = os.path.join(STATE, 'run')
DONE = os.path.join(STATE, 'done')
CLOUDS_YAML = os.path.join(STATE, 'clouds.yaml')
HOST = '127.0.0.1'
REGION = 'RegionOne'
KEYSTONE_URL = 'http://%s:5000' % HOST
# Every process started here carries this in its environment: it tells our
# processes apart from others (and from recycled PIDs after a reboot).
MARKER = 'MINICLOUD_INSTANCE'


def log(msg):
    print('minicloud: %s' % msg, file=sys.stderr, flush=True)


class Error(Exception):
    pass


# --------------------------------------------------------------------------
# Secrets, generated once per state dir.

_secrets = None


def get_secrets():
    global _secrets
    if _secrets is None:
        path = os.path.join(STATE, 'secrets.json')
        if os.path.exists(path):
            with open(path) as f:
                _secrets = json.load(f)
        else:
            os.makedirs(STATE, exist_ok=True)
            _secrets = {
                'db': secrets.token_hex(12),
                'admin': secrets.token_hex(12),
                'member': secrets.token_hex(12),
                'service': secrets.token_hex(12),
                'kek': base64.b64encode(secrets.token_bytes(32)).decode(),
            }
            tmp = path + '.tmp'
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                              0o600), 'w') as f:
                json.dump(_secrets, f, indent=1)
            os.rename(tmp, path)
    return _secrets


def db_url(name):
    return 'mysql+pymysql://openstack:%s@%s/%s?charset=utf8' % (
        get_secrets()['db'], HOST, name)


# --------------------------------------------------------------------------
# Small helpers.

def write_if_changed(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with open(path) as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    tmp = path + '.tmp'
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode),
              'w') as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.rename(tmp, path)
    return True


def ini(sections):
    """Render {section: {key: value}} as an ini file."""
    out = []
    for section, items in sections.items():
        out.append('[%s]' % section)
        for key, value in items.items():
            if isinstance(value, bool):
                value = 'true' if value else 'false'
            out.append('%s = %s' % (key, value))
        out.append('')
    return '\n'.join(out)


def done(step):
    return os.path.exists(os.path.join(DONE, step))


def mark_done(step):
    os.makedirs(DONE, exist_ok=True)
    with open(os.path.join(DONE, step), 'w') as f:
        f.write(time.strftime('%Y-%m-%dT%H:%M:%S\n'))


def run(cmd, *, env=None, check=True, timeout=900, quiet=True, ok=(0,),
        **kw):
    """Run a setup command; on failure (an exit code not in ok) show the
    end of its output."""
    full_env = dict(os.environ)
    full_env.update(base_env())
    if env:
        full_env.update(env)
    p = subprocess.run(cmd, env=full_env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=timeout, **kw)
    if check and p.returncode not in ok:
        raise Error('%s failed (exit %d):\n%s' % (
            ' '.join(cmd), p.returncode, p.stdout[-3000:]))
    if not quiet:
        sys.stderr.write(p.stdout)
    return p


def base_env():
    return {
        MARKER: STATE,
        'MINICLOUD_ETC': ETC,
        'PYTHONPATH': TOOLS,
        'PATH': os.path.join(VENV, 'bin') + ':' + os.environ.get(
            'PATH', '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin'),
        'HOME': os.path.join(STATE, 'home'),
    }


def bin_(name):
    return os.path.join(VENV, 'bin', name)


def tail(path, n=25):
    try:
        with open(path, errors='replace') as f:
            return ''.join(f.readlines()[-n:])
    except OSError:
        return ''
