#!/usr/bin/env python3
"""How fast is `openstack backup image save` next to curl and OSC?

On the local minicloud (tools/minicloud up), with a random image (1 GiB
by default, uploaded once and deleted afterwards unless --image is given),
runs side by side, interleaved, --runs times:

  curl+sync      curl -o F (token from the SDK) && sync F
  image-save     openstack image save --file F              (OSC defaults)
  image-save-1M  openstack image save --chunk-size 1048576 --file F
  backup-save    openstack backup image save --file F --overwrite
                 (verifies os_hash_value, computes sha256, fsyncs, writes
                 the manifest and checksum file)

The openstack commands have the CLI start-up (median `openstack --version`)
subtracted. Prints median seconds, throughput, peak RSS of each and the
ratios the goals are about: backup-save >= 3x image-save and >= 0.9x
curl+sync. Not a test: numbers depend on the machine.

    eval "$(tools/minicloud env)"
    .venv/bin/python benchmarks/image_save.py [--size-mib 1024] [--runs 3]

Only talks to 127.0.0.1 (the minicloud). Run as the member user.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

MiB = 1024 * 1024
HERE = os.path.dirname(os.path.abspath(__file__))
OPENSTACK = os.path.join(os.path.dirname(sys.executable), 'openstack')


def run_measured(argv, env=None):
    """Run argv; return (seconds, peak RSS in MiB of it and its children)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    stderr = proc.stderr.read().decode(errors='replace')
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f'{argv!r} failed ({proc.returncode}):\n{stderr}')
    return elapsed, usage.ru_maxrss / 1024.0


def make_image(conn, size_mib, workdir):
    path = os.path.join(workdir, 'source.raw')
    with open(path, 'wb') as f:
        for _ in range(size_mib):
            f.write(os.urandom(MiB))
    print(f'uploading a {size_mib} MiB random image ...', file=sys.stderr)
    image = conn.image.create_image(
        name='osc-backup-bench-image-save', filename=path,
        disk_format='raw', container_format='bare', wait=True,
        validate_checksum=False, allow_duplicates=True)
    os.unlink(path)
    image = conn.image.wait_for_status(image, 'active', wait=600)
    return image


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cloud', default='minicloud')
    parser.add_argument('--size-mib', type=int, default=1024)
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--image', help='use this image, do not create one')
    parser.add_argument('--keep-image', action='store_true')
    parser.add_argument('--only', action='append',
                        help='run only these methods (repeatable)')
    parser.add_argument('--workdir', default=None,
                        help='where the files go (default: a new folder '
                        'in /var/tmp, on the same disk as a user would '
                        'save to)')
    args = parser.parse_args()

    import openstack

    conn = openstack.connect(cloud=args.cloud)
    endpoint = conn.image.get_endpoint()
    if not endpoint.startswith(('http://127.0.0.1', 'http://localhost')):
        raise SystemExit(f'refusing to benchmark a non-local cloud: '
                         f'{endpoint}')
    workdir = args.workdir or tempfile.mkdtemp(prefix='osc-backup-bench-',
                                               dir='/var/tmp')
    os.makedirs(workdir, exist_ok=True)
    created = None
    try:
        if args.image:
            image = conn.image.get_image(args.image)
        else:
            image = created = make_image(conn, args.size_mib, workdir)
        size = image.size
        url = conn.image.get_endpoint().rstrip('/')
        if not url.endswith('/v2'):
            url += '/v2'
        url = f'{url}/images/{image.id}/file'
        out = os.path.join(workdir, 'out.raw')
        env = dict(os.environ)
        os_ = [OPENSTACK, '--os-cloud', args.cloud]

        def curl():
            token = conn.session.get_token()
            return ['sh', '-c',
                    'curl -sS --fail -o "$0" -H "X-Auth-Token: $1" "$2" '
                    '&& sync "$0"', out, token, url]

        methods = {
            'curl+sync': (curl, False),
            'image-save': (lambda: [
                *os_, 'image', 'save', '--file', out, image.id], True),
            'image-save-1M': (lambda: [
                *os_, 'image', 'save', '--chunk-size', str(MiB), '--file',
                out, image.id], True),
            'backup-save': (lambda: [
                *os_, 'backup', 'image', 'save', '--overwrite', '--file',
                out, image.id], True),
        }
        if args.only:
            methods = {k: v for k, v in methods.items() if k in args.only}

        startup = []
        for _ in range(5):
            startup.append(run_measured([OPENSTACK, '--version'], env)[0])
        start_up = statistics.median(startup)
        print(f'openstack --version: median {start_up:.2f}s (subtracted '
              'from the openstack commands)', file=sys.stderr)

        times = {k: [] for k in methods}
        rss = {k: [] for k in methods}
        for r in range(args.runs):
            for name, (argv, is_cli) in methods.items():
                for f in os.listdir(workdir):
                    if f.startswith(('out.raw', '.out.raw')):
                        os.unlink(os.path.join(workdir, f))
                os.sync()  # nobody else's dirty pages in our timing
                seconds, peak = run_measured(argv(), env)
                if os.path.getsize(out) != size:
                    raise SystemExit(f'{name}: wrong size')
                if is_cli:
                    seconds -= start_up
                times[name].append(seconds)
                rss[name].append(peak)
                print(f'run {r + 1} {name:14s} {seconds:6.2f}s '
                      f'{size / MiB / seconds:7.1f} MiB/s '
                      f'peak RSS {peak:6.1f} MiB', file=sys.stderr)

        print(f'\n{size / MiB:.0f} MiB image, {args.runs} runs, medians '
              f'(CLI start-up {start_up:.2f}s subtracted)')
        print(f'{"method":14s} {"seconds":>8s} {"MiB/s":>8s} '
              f'{"peak RSS MiB":>13s}')
        med = {k: statistics.median(v) for k, v in times.items()}
        for name in methods:
            print(f'{name:14s} {med[name]:8.2f} {size / MiB / med[name]:8.1f}'
                  f' {max(rss[name]):13.1f}')
        if 'backup-save' in med:
            print()
            for ref in ('curl+sync', 'image-save', 'image-save-1M'):
                if ref in med:
                    print(f'backup-save speed / {ref}: '
                          f'{med[ref] / med["backup-save"]:.2f}x')
    finally:
        if created is not None and not args.keep_image:
            conn.image.delete_image(created, ignore_missing=True)
        elif created is not None:
            print(f'kept image {created.id}', file=sys.stderr)
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == '__main__':
    main()
