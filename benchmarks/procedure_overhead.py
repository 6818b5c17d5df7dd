#!/usr/bin/env python3
"""The tool's own overhead per procedure, against a minimal SDK script.

On the local minicloud (tools/minicloud up), each main procedure runs side
by side, in interleaved rounds (the order alternates every round):

  tool  the real ``openstack backup ...`` command, its wall time minus the
        CLI start-up (median wall time of ``openstack --version``)
  sdk   a minimal openstacksdk script of the same API steps with a fixed
        0.25 s polling tick (in its own process, timed from before
        ``openstack.connect()``: authentication included, as for the tool)

Procedures (1 GiB volumes with random data at spread offsets):

  via-image-available   backup volume create --via-image <available volume>
                        sdk: upload-to-image, wait image active and volume
                        available
  via-image-in-use      backup volume create --via-image <attached volume>
                        sdk: snapshot (force) -> volume from it -> upload ->
                        wait image and volume -> delete volume -> delete
                        snapshot, each waited for
  via-backup            backup volume create --via-backup <available volume>
                        sdk: create backup, wait available
  volume-restore        backup volume restore <backup>
                        sdk: create volume, wait, restore backup onto it,
                        wait available
  image-restore         backup image restore <set> (a 256 MiB set saved by
                        ``backup image save``)
                        sdk: create image, upload the file, wait active

What each run created is deleted between runs (not timed). Prints, per
procedure, the minimum and median seconds of each, their ratio (tool/sdk
of the minima: the goal is <= 1.15) and the API requests each made (from
keystoneauth's request log: ``--debug`` for the tool, a log handler in the
script; the goal is at most 2x the script's). Not a test: numbers depend
on the machine.

    eval "$(tools/minicloud env)"
    .venv/bin/python benchmarks/procedure_overhead.py [--rounds 3]
        [--only via-image-in-use,...]

Only talks to the minicloud (cloud ``minicloud``, a member user).
"""

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import local_cloud

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
OPENSTACK = os.path.join(BIN, 'openstack')
MINICLOUD = os.path.join(REPO, 'tools', 'minicloud')
CLOUD = 'minicloud'
MiB = 1024 * 1024
GiB = 1024 * MiB
TICK = 0.25
PROCEDURES = ('via-image-available', 'via-image-in-use', 'via-backup',
              'volume-restore', 'image-restore')


# ---- the SDK side (run in a child process: `--sdk <procedure> ...`) ----

class _Count(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.requests = 0

    def emit(self, record):
        if record.getMessage().startswith('REQ: '):
            self.requests += 1


def _poll(fetch, done, failed=('error',)):
    while True:
        res = fetch()
        if res is None or done(res):
            return res
        if getattr(res, 'status', '').lower() in failed:
            raise RuntimeError(f'{res.id} went to {res.status}')
        time.sleep(TICK)


def _gone(fetch):
    from openstack import exceptions

    while True:
        try:
            fetch()
        except exceptions.NotFoundException:
            return
        time.sleep(TICK)


def sdk_main(procedure, source, name):
    """One procedure through openstacksdk; prints JSON on stdout."""
    import openstack

    counter = _Count()
    log = logging.getLogger('keystoneauth')
    log.setLevel(logging.DEBUG)
    log.addHandler(counter)
    log.propagate = False
    started = time.monotonic()
    conn = openstack.connect(cloud=CLOUD)
    bs, image = conn.block_storage, conn.image

    def active(img_id):
        return _poll(lambda: image.get_image(img_id),
                     lambda i: i.status == 'active', ('killed',))

    def available(vol_id, get=bs.get_volume):
        return _poll(lambda: get(vol_id), lambda v: v.status == 'available')

    def upload(vol):
        """upload-to-image, wait image active and volume available."""
        res = bs.upload_volume_to_image(vol, name, force=False,
                                        disk_format='raw',
                                        container_format='bare')
        active(res['image_id'])
        available(vol.id)

    if procedure == 'via-image-available':
        upload(bs.get_volume(source))
    elif procedure == 'via-image-in-use':
        vol = bs.get_volume(source)
        snap = bs.create_snapshot(volume_id=vol.id, force=True, name=name)
        available(snap.id, bs.get_snapshot)
        tmp = bs.create_volume(snapshot_id=snap.id, size=vol.size, name=name)
        available(tmp.id)
        upload(tmp)
        bs.delete_volume(tmp)
        _gone(lambda: bs.get_volume(tmp.id))
        bs.delete_snapshot(snap)
        _gone(lambda: bs.get_snapshot(snap.id))
    elif procedure == 'via-backup':
        vol = bs.get_volume(source)
        backup = bs.create_backup(volume_id=vol.id, name=name)
        available(backup.id, bs.get_backup)
    elif procedure == 'volume-restore':
        backup = bs.get_backup(source)
        vol = bs.create_volume(size=backup.size, name=name)
        available(vol.id)
        bs.restore_backup(backup, volume_id=vol.id)
        available(vol.id)
    elif procedure == 'image-restore':
        img = image.create_image(name=name, disk_format='raw',
                                 container_format='bare')
        with open(source, 'rb') as data:
            img.upload(image, data=data)
        active(img.id)
    else:
        raise SystemExit(f'unknown procedure {procedure}')
    elapsed = time.monotonic() - started
    json.dump({'seconds': elapsed, 'requests': counter.requests},
              sys.stdout)


# ---- the harness -------------------------------------------------------

def sh(argv, **kwargs):
    return subprocess.run(argv, check=True, capture_output=True, text=True,
                          **kwargs)


def cli_startup(n=7):
    times = []
    for _ in range(n):
        t = time.monotonic()
        sh([OPENSTACK, '--version'])
        times.append(time.monotonic() - t)
    return statistics.median(times)


class Bench:
    def __init__(self, conn, args):
        self.conn = conn
        self.args = args
        self.tag = f'bench-{uuid.uuid4().hex[:6]}'
        self.tmp = tempfile.mkdtemp(prefix='osc-backup-bench-')
        self.sources = {}
        self.made = []  # (kind, id) of fixtures, deleted at the end

    # fixtures
    def _volume(self, label):
        bs = self.conn.block_storage
        vol = bs.create_volume(size=1, name=f'{self.tag}-{label}')
        self.made.append(('volume', vol.id))
        bs.wait_for_status(vol, 'available', interval=0.5, wait=300)
        path = sh([MINICLOUD, 'volume-path', vol.id]).stdout.strip()
        for offset in (0, 400, 960):  # random data at spread offsets
            sh(['dd', 'if=/dev/urandom', f'of={path}', 'bs=1M', 'count=64',
                f'seek={offset}', 'conv=notrunc', 'status=none'])
        return vol

    def setup(self, wanted):
        bs, image = self.conn.block_storage, self.conn.image
        if wanted & {'via-image-available', 'via-backup', 'volume-restore'}:
            vol = self._volume('avail')
            self.sources['via-image-available'] = vol.id
            self.sources['via-backup'] = vol.id
            if 'volume-restore' in wanted:
                backup = bs.create_backup(volume_id=vol.id,
                                          name=f'{self.tag}-base')
                self.made.append(('backup', backup.id))
                bs.wait_for_status(backup, 'available', interval=0.5,
                                   wait=600)
                self.sources['volume-restore'] = backup.id
        if 'via-image-in-use' in wanted:
            vol = self._volume('inuse')
            sh([MINICLOUD, 'attach', vol.id])
            self.sources['via-image-in-use'] = vol.id
        if 'image-restore' in wanted:
            raw = os.path.join(self.tmp, 'seed.raw')
            with open(raw, 'wb') as f:
                f.write(os.urandom(256 * MiB))
            img = image.create_image(name=f'{self.tag}-seed',
                                     disk_format='raw',
                                     container_format='bare')
            with open(raw, 'rb') as data:
                img.upload(image, data=data)
            image.wait_for_status(img, 'active', interval=0.5, wait=300)
            setdir = os.path.join(self.tmp, 'set')
            os.mkdir(setdir)
            out = sh([OPENSTACK, '--os-cloud', CLOUD, 'backup', 'image',
                      'save', '--dir', setdir, img.id, '-f', 'json'])
            image.delete_image(img.id)
            saved = json.loads(out.stdout)
            self.sources['image-restore'] = saved['manifest']
            self.sources['image-restore-data'] = saved['file']

    # one run of each side
    def tool(self, procedure, debug=False):
        name = f'{self.tag}-{uuid.uuid4().hex[:6]}'
        src = self.sources[procedure]
        argv = {
            'via-image-available': ['volume', 'create', '--via-image'],
            'via-image-in-use': ['volume', 'create', '--via-image'],
            'via-backup': ['volume', 'create', '--via-backup'],
            'volume-restore': ['volume', 'restore'],
            'image-restore': ['image', 'restore'],
        }[procedure]
        cmd = [OPENSTACK, '--os-cloud', CLOUD]
        if debug:
            cmd.append('--debug')
        cmd += ['backup', *argv, '--name', name, src, '-f', 'json']
        t = time.monotonic()
        res = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.monotonic() - t
        if res.returncode:
            raise SystemExit(f'{" ".join(cmd)} failed:\n{res.stderr}')
        requests = sum(1 for line in res.stderr.splitlines()
                       if line.startswith('REQ: curl'))
        self.remove_named(name)
        return seconds, requests

    def sdk(self, procedure):
        name = f'{self.tag}-{uuid.uuid4().hex[:6]}'
        src = self.sources[procedure]
        if procedure == 'image-restore':
            src = self.sources['image-restore-data']
        res = sh([sys.executable, __file__, '--sdk', procedure, src, name])
        out = json.loads(res.stdout)
        self.remove_named(name)
        return out['seconds'], out['requests']

    def remove_named(self, name):
        """Delete what a run made (found by its name), wait until gone."""
        bs, image = self.conn.block_storage, self.conn.image
        for img in image.images():
            if img.name == name:
                image.delete_image(img.id)
        for backup in bs.backups():
            if backup.name == name:
                bs.wait_for_status(backup, 'available', interval=0.5,
                                   wait=600)
                bs.delete_backup(backup)
                bs.wait_for_delete(backup, interval=0.5, wait=600)
        for vol in bs.volumes():
            if vol.name == name:
                bs.wait_for_status(vol, 'available', interval=0.5, wait=600)
                bs.delete_volume(vol)
                bs.wait_for_delete(vol, interval=0.5, wait=600)
        # the sources must be quiet again before the next run
        for key, vid in self.sources.items():
            if not key.startswith('via-'):
                continue
            quiet = 'in-use' if key == 'via-image-in-use' else 'available'
            vol = bs.get_volume(vid)
            if vol.status != quiet:
                bs.wait_for_status(vol, quiet, interval=0.5, wait=600)

    def teardown(self):
        bs = self.conn.block_storage
        for kind, ident in reversed(self.made):
            try:
                if kind == 'volume':
                    vol = bs.get_volume(ident)
                    if vol.status == 'in-use':
                        subprocess.run([MINICLOUD, 'detach', ident],
                                       capture_output=True)
                        bs.wait_for_status(vol, 'available', interval=0.5,
                                           wait=300)
                    bs.delete_volume(ident)
                    bs.wait_for_delete(vol, interval=0.5, wait=300)
                elif kind == 'backup':
                    backup = bs.get_backup(ident)
                    bs.delete_backup(ident)
                    bs.wait_for_delete(backup, interval=0.5, wait=300)
            except Exception as exc:  # report, go on
                print(f'teardown: {kind} {ident}: {exc}', file=sys.stderr)
        subprocess.run(['rm', '-rf', self.tmp])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--only', default=','.join(PROCEDURES),
                        help='comma-separated procedures')
    parser.add_argument('--sdk', nargs=3, metavar=('PROC', 'SRC', 'NAME'),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sdk:
        return sdk_main(*args.sdk)
    wanted = [p for p in args.only.split(',') if p]
    for p in wanted:
        if p not in PROCEDURES:
            parser.error(f'unknown procedure {p}')
    conn = local_cloud.connect(CLOUD)
    bench = Bench(conn, args)
    results = {p: {'tool': [], 'sdk': []} for p in wanted}
    requests = {}
    try:
        bench.setup(set(wanted))
        startup = cli_startup()
        print(f'CLI start-up (openstack --version, median): {startup:.2f}s')
        for p in wanted:  # request counts (and a warm-up of each side)
            requests[p] = (bench.tool(p, debug=True)[1], bench.sdk(p)[1])
        for r in range(args.rounds):
            for p in wanted:
                sides = ('tool', 'sdk') if r % 2 == 0 else ('sdk', 'tool')
                for side in sides:
                    if side == 'tool':
                        seconds = bench.tool(p)[0] - startup
                    else:
                        seconds = bench.sdk(p)[0]
                    results[p][side].append(seconds)
                    print(f'  round {r + 1} {p:20} {side:4} {seconds:6.2f}s',
                          flush=True)
    finally:
        bench.teardown()
    print()
    print(f'{"procedure":20} {"tool min/med":>14} {"sdk min/med":>14} '
          f'{"ratio":>6} {"requests tool/sdk":>18}')
    for p in wanted:
        tool, sdk = results[p]['tool'], results[p]['sdk']
        ratio = min(tool) / min(sdk)
        rq_tool, rq_sdk = requests[p]
        print(f'{p:20} {min(tool):6.2f}/{statistics.median(tool):6.2f} '
              f'{min(sdk):6.2f}/{statistics.median(sdk):6.2f} '
              f'{ratio:5.2f}x {rq_tool:>8}/{rq_sdk:<4} '
              f'({rq_tool / rq_sdk:.1f}x)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
