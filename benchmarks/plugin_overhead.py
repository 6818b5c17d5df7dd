#!/usr/bin/env python3
"""Does installing osc-backup slow down `openstack` commands that are not ours?

OSC imports every plugin's hook module on every call. This benchmark builds
two virtualenvs with the same pinned client stack (upper-constraints.txt):
one with python-openstackclient only, one with osc-backup installed too
(`pip install .`, as a user would), then times `openstack --version` in
both, interleaved, and prints the medians and their ratio.
Goal: the plugin adds <= 2%.

    python3 benchmarks/plugin_overhead.py [--runs 40] [--keep]
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONSTRAINTS = os.path.join(REPO, 'upper-constraints.txt')


def make_venv(path, *packages):
    if os.path.exists(os.path.join(path, 'bin', 'openstack')):
        return
    subprocess.run([sys.executable, '-m', 'venv', path], check=True)
    subprocess.run(
        [os.path.join(path, 'bin', 'pip'), 'install', '-q',
         '--disable-pip-version-check', '-c', CONSTRAINTS, *packages],
        check=True, stderr=subprocess.DEVNULL,
    )


def time_once(openstack):
    """(wall seconds, CPU seconds) of one `openstack --version`.

    CPU time (user + sys of the child) is much less sensitive than wall
    time to other load on the machine, so both are reported.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [openstack, '--version'], check=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith('OS_')},
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (
        after.ru_stime - before.ru_stime)
    return wall, cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=40)
    parser.add_argument('--workdir', default=os.path.join(
        tempfile.gettempdir(), 'osc-backup-bench-overhead'))
    parser.add_argument('--keep', action='store_true',
                        help='keep the two virtualenvs for the next run')
    args = parser.parse_args()

    without = os.path.join(args.workdir, 'without')
    with_ = os.path.join(args.workdir, 'with')
    print('building virtualenvs (first run only) ...', file=sys.stderr)
    make_venv(without, 'python-openstackclient')
    make_venv(with_, 'python-openstackclient', REPO)
    check = subprocess.run(
        [os.path.join(with_, 'bin', 'openstack'), 'help', 'backup'],
        capture_output=True, text=True, check=False,
    )
    if 'backup volume create' not in check.stdout:
        sys.exit('the plugin is not active in the "with" virtualenv')

    bins = {
        'without plugin': os.path.join(without, 'bin', 'openstack'),
        'with plugin': os.path.join(with_, 'bin', 'openstack'),
    }
    samples = {k: [] for k in bins}
    for _ in range(3):  # warm caches (page cache, stevedore's cache)
        for b in bins.values():
            time_once(b)
    for _ in range(args.runs):  # interleaved, so drift hits both alike
        for name, b in bins.items():
            samples[name].append(time_once(b))

    print(f'`openstack --version`, {args.runs} interleaved runs each')
    for i, what in ((0, 'wall'), (1, 'CPU')):
        for name, s in samples.items():
            v = [x[i] for x in s]
            print(f'  {what:4s} {name:15s} median '
                  f'{statistics.median(v) * 1000:7.1f} ms  '
                  f'min {min(v) * 1000:7.1f} ms  '
                  f'stdev {statistics.stdev(v) * 1000:5.1f} ms')
        ratio = (statistics.median(x[i] for x in samples['with plugin'])
                 / statistics.median(x[i] for x in samples['without plugin']))
        print(f'  {what} ratio with/without (median): {ratio:.3f} '
              f'({(ratio - 1) * 100:+.1f}%; goal <= +2.0%)')
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
