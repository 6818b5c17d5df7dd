#!/usr/bin/env python3
"""``backup run --parallel 4`` against the same uploads done by hand.

On the local minicloud (tools/minicloud up), four 1 GiB volumes with
random data at spread offsets are backed up to images three ways, in
interleaved rounds (the order rotates every round):

  run         openstack backup run --property <tag> --via-image
              --parallel 4  (one command, four workers; --parallel N to
              change it)
  sequential  the four ``openstack backup volume create --via-image``
              commands, one after the other
  parallel    the four uploads started at once with plain ``openstack
              image create --volume`` (four processes), then awaited by
              this script (images active, volumes available again; a
              0.25 s polling tick)

The minicloud's Glance ran four threads when this was written (sixteen
now): while four uploads held them, its other requests waited for one to
end, longer than the tool's default API timeout (60 s, for clouds that
configure none). Plain ``openstack`` commands wait without a timeout, so
the ``openstack`` commands of this benchmark run with ``api_timeout:
900`` (a copy of clouds.yaml).

What a run made is deleted between runs (not timed). Prints the minimum
and median seconds of each and the ratios of the minima: run/parallel
(goal: <= 1.15) and run/sequential (goal: <= 0.9). Not a test: numbers
depend on the machine.

    eval "$(tools/minicloud env)"
    .venv/bin/python benchmarks/run_parallel.py [--rounds 3]

Only talks to the minicloud (cloud ``minicloud``, a member user).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

import local_cloud
import procedure_overhead
import yaml
from procedure_overhead import CLOUD, OPENSTACK

COUNT = 4
TICK = 0.25
WAYS = ('run', 'sequential', 'parallel')
#: api_timeout of the commands (see the docstring)
API_TIMEOUT = 900


def patient_env(tmp):
    """The environment of the commands: a clouds.yaml with a long
    api_timeout for the benchmarked cloud."""
    path = os.environ['OS_CLIENT_CONFIG_FILE']
    with open(path) as f:
        config = yaml.safe_load(f)
    config['clouds'][CLOUD]['api_timeout'] = API_TIMEOUT
    copy = os.path.join(tmp, 'clouds.yaml')
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, 'w') as f:
        yaml.safe_dump(config, f)
    return dict(os.environ, OS_CLIENT_CONFIG_FILE=copy)


class RunBench:
    def __init__(self, conn, args):
        self.conn = conn
        # the fixtures (1 GiB volumes, random data at spread offsets) and
        # their teardown are procedure_overhead's
        self.fixtures = procedure_overhead.Bench(conn, args)
        self.tag = self.fixtures.tag
        self.volumes = []
        self.images = []
        self.workers = args.parallel
        self.env = patient_env(self.fixtures.tmp)

    def setup(self):
        bs = self.conn.block_storage
        for index in range(COUNT):
            vol = self.fixtures._volume(f'v{index}')
            bs.set_volume_metadata(vol, **{'osc-backup-bench': self.tag})
            self.volumes.append(vol)

    def _cli(self, *args):
        return [OPENSTACK, '--os-cloud', CLOUD, *args]

    def run(self):
        res = subprocess.run(
            self._cli('backup', 'run', '--property',
                      f'osc-backup-bench={self.tag}', '--via-image',
                      '--parallel', str(self.workers), '-f', 'json'),
            capture_output=True, text=True, env=self.env)
        rows = json.loads(res.stdout or '[]')
        for row in rows:
            self.images += row['Backup']
        if res.returncode:
            errors = '\n'.join(f"{r['Resource']}: {r['Error']}" for r in rows)
            raise SystemExit(f'backup run failed:\n{res.stderr}{errors}')

    def sequential(self):
        for vol in self.volumes:
            res = subprocess.run(
                self._cli('backup', 'volume', 'create', '--via-image',
                          vol.id, '-f', 'json'),
                capture_output=True, text=True, env=self.env)
            if res.returncode:
                raise SystemExit(f'backup volume create failed:\n'
                                 f'{res.stderr}')
            self.images.append(json.loads(res.stdout)['image_id'])

    def parallel(self):
        procs = [
            subprocess.Popen(
                self._cli('image', 'create', '--volume', vol.id,
                          '--disk-format', 'raw', '--container-format',
                          'bare', f'{self.tag}-{uuid.uuid4().hex[:6]}',
                          '-f', 'json'),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=self.env)
            for vol in self.volumes
        ]
        waiting = []
        for proc in procs:
            out, err = proc.communicate()
            if proc.returncode:
                raise SystemExit(f'image create --volume failed:\n{err}')
            waiting.append(json.loads(out)['image_id'])
        self.images += waiting
        self._await(waiting)

    def _await(self, image_ids):
        """Until every image is active and every volume available."""
        image, bs = self.conn.image, self.conn.block_storage
        left = [('image', i) for i in image_ids]
        left += [('volume', v.id) for v in self.volumes]
        deadline = time.monotonic() + 1800
        while left:
            kind, ident = left[0]
            if kind == 'image':
                status = image.get_image(ident).status
                done, failed = status == 'active', status in ('killed',)
            else:
                status = bs.get_volume(ident).status
                done, failed = status == 'available', status == 'error'
            if failed or time.monotonic() > deadline:
                raise SystemExit(f'{kind} {ident} is {status}')
            if done:
                left.pop(0)
            else:
                time.sleep(TICK)

    def clean(self):
        """Delete the images of the last run; wait until the volumes are
        quiet again."""
        image, bs = self.conn.image, self.conn.block_storage
        for ident in self.images:
            image.delete_image(ident, ignore_missing=True)
        for ident in self.images:
            img = image.find_image(ident)
            if img is not None:
                image.wait_for_delete(img, interval=0.5, wait=300)
        self.images = []
        for vol in self.volumes:
            bs.wait_for_status(bs.get_volume(vol.id), 'available',
                               interval=0.5, wait=600)

    def teardown(self):
        self.clean()
        self.fixtures.teardown()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=1)
    parser.add_argument('--parallel', type=int, default=COUNT,
                        help='--parallel of backup run (default: 4)')
    args = parser.parse_args()
    conn = local_cloud.connect(CLOUD)
    bench = RunBench(conn, args)
    times = {way: [] for way in WAYS}
    startup = 0.0
    try:
        print(f'setting up {COUNT} volumes of 1 GiB...', file=sys.stderr)
        bench.setup()
        startup = procedure_overhead.cli_startup()
        for rnd in range(args.rounds):
            order = WAYS[rnd % len(WAYS):] + WAYS[:rnd % len(WAYS)]
            for way in order:
                started = time.monotonic()
                getattr(bench, way)()
                seconds = time.monotonic() - started
                times[way].append(seconds)
                print(f'round {rnd + 1}: {way:10s} {seconds:7.1f} s',
                      file=sys.stderr)
                bench.clean()
    finally:
        bench.teardown()
    print(f'CLI start-up (openstack --version, median): {startup:.2f} s')
    print(f'{"way":12s} {"min s":>8s} {"median s":>9s}')
    for way in WAYS:
        print(f'{way:12s} {min(times[way]):8.1f} '
              f'{statistics.median(times[way]):9.1f}')
    best = {way: min(times[way]) for way in WAYS}
    print(f'run/parallel:   {best["run"] / best["parallel"]:.2f}x '
          '(goal <= 1.15)')
    print(f'run/sequential: {best["run"] / best["sequential"]:.2f}x '
          '(goal <= 0.9)')


if __name__ == '__main__':
    main()
