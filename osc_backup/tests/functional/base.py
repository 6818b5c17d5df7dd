"""Base for functional tests against the real minicloud (tools/minicloud).

The tests run the real ``openstack`` binary of the venv that runs the tests,
with ``--os-cloud minicloud`` (a plain project member) or
``--os-cloud minicloud-admin``, and an environment stripped of every
``OS_*`` variable except ``OS_CLIENT_CONFIG_FILE``, which points at the
minicloud's clouds.yaml.

Skip rule: outside CI a cloud that is not up (``tools/minicloud status``
exits non-zero) skips the tests with a message; with ``CI=true`` it fails
them.

Every command a test runs (through :meth:`FunctionalTestCase.openstack`,
:meth:`FunctionalTestCase.run_cli`, or handed to
:meth:`FunctionalTestCase.record` by a test that runs its own process) is
logged with its exit status, stdout and stderr; when the test fails, that
log is attached to the failure as the ``commands`` detail, so every failure
message carries the stderr of the commands that led to it.
"""

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid

import openstack.config
import openstack.connection
import testtools
from testtools import content

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
MINICLOUD = os.path.join(REPO, 'tools', 'minicloud')
OPENSTACK = os.path.join(os.path.dirname(sys.executable), 'openstack')
MEMBER_CLOUD = 'minicloud'
ADMIN_CLOUD = 'minicloud-admin'
GiB = 1024 ** 3
MiB = 1024 ** 2

#: default bound for one wait, in seconds
WAIT_TIMEOUT = int(os.environ.get('OSC_BACKUP_FUNCTIONAL_TIMEOUT', '300'))
#: bound for one command
COMMAND_TIMEOUT = 900
#: how much of each command's output the failure detail shows
DETAIL_CHARS = 4000
#: name prefix of every temporary resource osc-backup creates
TEMPORARY_PREFIX = 'osc-backup-tmp-'


class CommandFailed(Exception):
    def __init__(self, returncode, cmd, stdout, stderr):
        self.returncode = returncode
        self.cmd = cmd
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f'Command {cmd!r} returned non-zero exit status {returncode}.\n'
            f'stdout:\n{stdout}\nstderr:\n{stderr}')


def minicloud(*args, check=True, timeout=COMMAND_TIMEOUT):
    """Run tools/minicloud; returns the CompletedProcess (text)."""
    cmd = [MINICLOUD] + [str(a) for a in args]
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise CommandFailed(p.returncode, ' '.join(cmd), p.stdout, p.stderr)
    return p


def clouds_yaml():
    """The clouds.yaml path, from `tools/minicloud env`."""
    out = minicloud('env', timeout=60).stdout
    for line in out.splitlines():
        if line.startswith('export OS_CLIENT_CONFIG_FILE='):
            return shlex.split(line.split('=', 1)[1])[0]
    raise RuntimeError('tools/minicloud env printed no OS_CLIENT_CONFIG_FILE')


def sha256_file(path, length=None):
    """sha256 of a file's first `length` bytes (all when None)."""
    h = hashlib.sha256()
    left = length
    with open(path, 'rb') as f:
        while left is None or left > 0:
            chunk = f.read(MiB if left is None else min(MiB, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    if left:
        raise AssertionError(f'{path} is {left} bytes short of {length}')
    return h.hexdigest()


_cloud_seen_up = False
#: how long a partial outage (some services down, Keystone answering) may
#: last before the cloud counts as not up: a test may stop a service on
#: purpose (tools/minicloud stop cinder-backup) while others run
PARTIAL_OUTAGE_WAIT = 120


def _status():
    try:
        p = minicloud('status', check=False, timeout=120)
        return p.returncode == 0, p.stdout + p.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)


def _keystone_ok(status_output):
    return any(line.split()[:2] == ['keystone', 'ok']
               for line in status_output.splitlines())


def check_cloud(test):
    """Skip (or, with CI=true, fail) `test` when the cloud is not up.

    Checked once per test process: once seen up, later failures are the
    tests' own to report (they are real errors, not a reason to skip).
    """
    global _cloud_seen_up
    if _cloud_seen_up:
        return
    ok, out = _status()
    deadline = time.time() + PARTIAL_OUTAGE_WAIT
    while not ok and _keystone_ok(out) and time.time() < deadline:
        time.sleep(3)
        ok, out = _status()
    if ok:
        _cloud_seen_up = True
        return
    msg = ('minicloud is not up (tools/minicloud status failed); start it '
           f'with `tools/minicloud up`:\n{out}')
    if os.environ.get('CI', '').lower() == 'true':
        test.fail('CI=true and ' + msg)
    test.skipTest(msg)


class FunctionalTestCase(testtools.TestCase):
    """Runs the real `openstack` CLI against the minicloud."""

    def setUp(self):
        super().setUp()
        self._commands = []
        self.addOnException(self._attach_commands)
        check_cloud(self)
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith('OS_')}
        self.env['OS_CLIENT_CONFIG_FILE'] = clouds_yaml()

    def connect(self, cloud=MEMBER_CLOUD):
        """An openstacksdk connection to `cloud`, configured as the CLI
        the tests run is; closed when the test ends."""
        config = openstack.config.OpenStackConfig(
            config_files=[self.env['OS_CLIENT_CONFIG_FILE']])
        conn = openstack.connection.Connection(
            config=config.get_one(cloud=cloud))
        self.addCleanup(conn.close)
        return conn

    # ---- the command log -------------------------------------------------
    def record(self, argv, returncode, stdout, stderr, *, quiet=False):
        """Log one command run by this test (see the module docstring).

        quiet: a polling command (status checks); the failure detail
        shows only the last few of those.
        """
        self._commands.append(
            (quiet, shlex.join(str(a) for a in argv), returncode,
             stdout or '', stderr or ''))

    def _attach_commands(self, exc_info):
        if not self._commands:
            return
        quiet_seen = sum(1 for c in self._commands if c[0])
        lines = []
        for quiet, cmd, rc, out, err in self._commands:
            if quiet:
                quiet_seen -= 1
                if quiet_seen >= 5:
                    continue
            lines.append(f'$ {cmd}\n# exit status {rc}')
            if err:
                lines.append('# stderr:\n' + err[-DETAIL_CHARS:].rstrip())
            if out and not quiet:
                lines.append('# stdout:\n' + out[:DETAIL_CHARS].rstrip())
        self.addDetail('commands', content.text_content('\n'.join(lines)))

    # ---- commands ------------------------------------------------------
    def run_cli(self, args, *, cloud=MEMBER_CLOUD, input=None,
                timeout=COMMAND_TIMEOUT, quiet=False):
        """Run `openstack --os-cloud CLOUD ARGS`; log it; return the
        CompletedProcess (text), whatever its exit status."""
        argv = [OPENSTACK, '--os-cloud', cloud, *args]
        p = subprocess.run(argv, env=self.env, input=input,
                           stdin=None if input is not None
                           else subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout)
        self.record(argv, p.returncode, p.stdout, p.stderr, quiet=quiet)
        return p

    def openstack(self, cmd, *, cloud=MEMBER_CLOUD, parse_output=False,
                  fail_ok=False, input=None, timeout=COMMAND_TIMEOUT,
                  quiet=False):
        """Run `openstack --os-cloud CLOUD CMD`.

        cmd is a string (split like a shell does) or a list.  Returns
        stdout, or json.loads(stdout) with `-f json` when parse_output.
        Raises CommandFailed on a non-zero exit unless fail_ok.
        """
        args = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        if parse_output:
            args += ['-f', 'json']
        p = self.run_cli(args, cloud=cloud, input=input, timeout=timeout,
                         quiet=quiet)
        argv = p.args
        if p.returncode != 0 and not fail_ok:
            raise CommandFailed(p.returncode, ' '.join(argv), p.stdout,
                                p.stderr)
        if parse_output and p.returncode == 0:
            return json.loads(p.stdout)
        return p.stdout

    def minicloud(self, *args, check=True, timeout=COMMAND_TIMEOUT):
        return minicloud(*args, check=check, timeout=timeout)

    # ---- waiting -------------------------------------------------------
    def wait_for_status(self, resource, ident, status, *, cloud=MEMBER_CLOUD,
                        timeout=WAIT_TIMEOUT, interval=1.0,
                        failures=('error',)):
        """Poll `openstack RESOURCE show IDENT -f json` until status.

        resource: 'volume', 'volume snapshot', 'volume backup', 'image'...
        Returns the last show output; fails on a failure status or timeout.
        """
        deadline = time.time() + timeout
        while True:
            info = self.openstack(f'{resource} show {ident}',
                                  cloud=cloud, parse_output=True, quiet=True)
            current = info.get('status')
            if current == status:
                return info
            if current in failures or (current or '').startswith('error'):
                self.fail(f'{resource} {ident} went {current} while '
                          f'waiting for {status}'
                          + self.why_failed(resource, ident, cloud))
            if time.time() > deadline:
                self.fail(f'{resource} {ident} still {current} after '
                          f'{timeout}s (waiting for {status})')
            time.sleep(interval)

    def why_failed(self, resource, ident, cloud=MEMBER_CLOUD):
        """A short diagnosis of a failed resource for a failure message:
        what Cinder says about it (its user messages), the state of the
        Block Storage services and the free space of the cloud's disk.

        A volume that goes ``error`` on creation in a shared CI run says
        nothing by itself; this is what tells a full disk from a service
        the scheduler saw as down. Never raises.
        """
        parts = []
        if resource.startswith('volume'):
            try:
                rows = self.openstack(
                    ['--os-volume-api-version', '3.3', 'volume', 'message',
                     'list'], cloud=cloud, parse_output=True, quiet=True)
                said = [r.get('User Message') for r in rows
                        if r.get('Resource UUID') == ident]
                parts.append('Cinder says: ' + ('; '.join(
                    str(m) for m in said) or 'nothing'))
            except (CommandFailed, ValueError) as e:
                parts.append(f'no Cinder messages ({str(e)[:200]})')
            try:
                rows = self.openstack(['volume', 'service', 'list'],
                                      cloud=ADMIN_CLOUD, parse_output=True,
                                      quiet=True)
                parts.append('services: ' + ', '.join(
                    f"{r.get('Binary')} {r.get('State')} "
                    f"(updated {r.get('Updated At')})" for r in rows))
            except (CommandFailed, ValueError) as e:
                parts.append(f'no service list ({str(e)[:200]})')
        try:
            usage = shutil.disk_usage(os.environ.get(
                'MINICLOUD_DIR', '/var/tmp/osc-backup-minicloud'))
            parts.append(f'disk: {usage.free / GiB:.1f} GiB free of '
                         f'{usage.total / GiB:.1f} GiB')
        except OSError as e:
            parts.append(f'disk: {e}')
        parts.append(time.strftime('at %H:%M:%S UTC', time.gmtime()))
        return '\n' + '\n'.join(parts)

    def wait_for_delete(self, resource, ident, *, cloud=MEMBER_CLOUD,
                        timeout=WAIT_TIMEOUT, interval=1.0):
        deadline = time.time() + timeout
        while True:
            try:
                self.openstack(f'{resource} show {ident}', cloud=cloud,
                               parse_output=True, quiet=True)
            except CommandFailed:
                return
            if time.time() > deadline:
                self.fail(f'{resource} {ident} not deleted after '
                          f'{timeout}s')
            time.sleep(interval)

    def temporaries(self, run_id='', *, cloud=MEMBER_CLOUD):
        """Temporary volumes and snapshots of osc-backup in the project,
        of the run ``run_id`` only when given, in any status (a deletion
        in progress counts): ``[(kind, name, status)]``.

        The project is shared by the tests that run at the same time: a
        test asserts on the runs it started, never on the whole project.
        """
        prefix = TEMPORARY_PREFIX + (f'{run_id}-' if run_id else '')
        found = []
        for kind in ('volume', 'volume snapshot'):
            for row in self.openstack([*kind.split(), 'list'], cloud=cloud,
                                      parse_output=True, quiet=True):
                name = row.get('Name') or ''
                if name.startswith(prefix):
                    found.append((kind, name, row.get('Status')))
        return found

    def temporaries_of(self, names, *, cloud=MEMBER_CLOUD):
        """osc-backup temporaries (volumes, snapshots, images) of the
        resources named ``names`` (``...-of-<name>``), from any run:
        ``[(kind, name, status)]``."""
        ends = tuple(f'-of-{n}' for n in names)
        found = [t for t in self.temporaries(cloud=cloud)
                 if t[1].endswith(ends)]
        for row in self.openstack(['image', 'list'], cloud=cloud,
                                  parse_output=True, quiet=True):
            name = row.get('Name') or ''
            if name.startswith(TEMPORARY_PREFIX) and name.endswith(ends):
                found.append(('image', name, row.get('Status')))
        return found

    # ---- resources (deleted by addCleanup) ------------------------------
    def unique_name(self, prefix='osc-backup-ft'):
        return f'{prefix}-{uuid.uuid4().hex[:10]}'

    def create_volume(self, size=1, *, name=None, volume_type=None,
                      snapshot=None, cloud=MEMBER_CLOUD, wait=True):
        """Create a volume of `size` GiB (Cinder's unit) and wait for it."""
        cmd = ['volume', 'create', '--size', str(size)]
        if volume_type:
            cmd += ['--type', volume_type]
        if snapshot:
            cmd += ['--snapshot', snapshot]
        cmd.append(name or self.unique_name())
        vol = self.openstack(cmd, cloud=cloud, parse_output=True)
        self.addCleanup(self._delete_volume, vol['id'], cloud)
        if wait:
            vol = self.wait_for_status('volume', vol['id'], 'available',
                                       cloud=cloud)
        return vol

    def _delete_volume(self, ident, cloud):
        try:
            info = self.openstack(['volume', 'show', ident], cloud=cloud,
                                  parse_output=True)
        except CommandFailed:
            return
        if info.get('status') == 'in-use':
            minicloud('detach', '--cloud', cloud, ident, check=False)
        self._wait_not_busy('volume', ident, cloud)
        self.openstack(['volume', 'delete', ident], cloud=cloud)
        self.wait_for_delete('volume', ident, cloud=cloud)

    def _wait_not_busy(self, resource, ident, cloud, timeout=WAIT_TIMEOUT):
        deadline = time.time() + timeout
        busy = ('creating', 'attaching', 'detaching', 'uploading',
                'downloading', 'backing-up', 'restoring-backup', 'deleting',
                'extending')
        while time.time() < deadline:
            try:
                info = self.openstack([*resource.split(), 'show', ident],
                                      cloud=cloud, parse_output=True,
                                      quiet=True)
            except CommandFailed:
                return
            if info.get('status') not in busy:
                return
            time.sleep(1)

    def create_snapshot(self, volume, *, name=None, force=False,
                        cloud=MEMBER_CLOUD):
        cmd = ['volume', 'snapshot', 'create', '--volume', volume,
               name or self.unique_name()]
        if force:
            cmd.insert(3, '--force')
        snap = self.openstack(cmd, cloud=cloud, parse_output=True)
        self.addCleanup(self._delete_simple, 'volume snapshot', snap['id'],
                        cloud)
        return self.wait_for_status('volume snapshot', snap['id'],
                                    'available', cloud=cloud)

    def create_image_from_volume(self, volume, *, name=None,
                                 cloud=MEMBER_CLOUD):
        """`openstack image create --volume`; waits for the image."""
        out = self.openstack(
            ['image', 'create', '--volume', volume, '--disk-format', 'raw',
             '--container-format', 'bare', name or self.unique_name()],
            cloud=cloud, parse_output=True)
        image_id = out['image_id']
        self.addCleanup(self._delete_simple, 'image', image_id, cloud)
        image = self.wait_for_status('image', image_id, 'active', cloud=cloud,
                                     failures=('killed', 'deleted'))
        # the volume goes back from 'uploading' after the image is done
        self.wait_for_status('volume', volume, 'available', cloud=cloud)
        return image

    def delete_image_if_present(self, ident, cloud=MEMBER_CLOUD):
        """Cleanup of an image a command made, which the test (or the
        command) may already have deleted."""
        if self.run_cli(['image', 'show', ident], cloud=cloud,
                        quiet=True).returncode:
            return
        self._delete_simple('image', ident, cloud)

    def _delete_simple(self, resource, ident, cloud):
        self._wait_not_busy(resource, ident, cloud)
        out = self.openstack([*resource.split(), 'delete', ident],
                             cloud=cloud, fail_ok=True)
        del out
        self.wait_for_delete(resource, ident, cloud=cloud)

    # ---- bytes -----------------------------------------------------------
    def volume_path(self, volume):
        return minicloud('volume-path', volume).stdout.strip()

    def write_random(self, volume, mib=4, offset_mib=1):
        """Write `mib` MiB of random bytes into the volume at `offset_mib`.

        Goes straight to the backend file (dd conv=notrunc).  Returns the
        sha256 of the volume's full byte range (size GiB).
        """
        info = self.openstack(['volume', 'show', volume], parse_output=True)
        path = self.volume_path(volume)
        subprocess.run(
            ['dd', 'if=/dev/urandom', 'of=' + path, 'bs=1M',
             f'count={mib}', f'seek={offset_mib}', 'conv=notrunc',
             'status=none'], check=True, timeout=300)
        return self.volume_sha256(volume, size=info['size'])

    def volume_sha256(self, volume, size=None):
        if size is None:
            size = self.openstack(['volume', 'show', volume],
                                  parse_output=True)['size']
        return sha256_file(self.volume_path(volume), length=size * GiB)

    def sha256_file(self, path, length=None):
        return sha256_file(path, length)
