#!/usr/bin/env python3
"""How fast is `openstack backup image save` next to curl and OSC?

On the local minicloud (tools/minicloud up), with a random image (1 GiB
by default, uploaded once and deleted afterwards unless --image is given),
runs side by side, interleaved, --runs times:

  curl+sync      curl -o F (token from the SDK) && sync F
  image-save     openstack image save --file F              (OSC defaults)
  image-save-1M  openstack image save --chunk-size 1048576 --file F
  backup-save    openstack backup image save --file F --overwrite
                 (verifies os_hash_value -- the one hash, no second
                 pass --, fsyncs, writes the manifest and checksum file
                 in .F.partial/ and renames the set into place)

The openstack commands have the CLI start-up (median `openstack --version`)
subtracted. Prints median seconds, throughput, peak RSS of each and the
ratios the goals are about: backup-save >= 3x image-save and >= 0.9x
curl+sync. Not a test: numbers depend on the machine.

CPU accounting, per method (medians): the client's user+sys CPU seconds
(the command and its children, from wait4; the openstack commands have
the CPU of `openstack --version` subtracted, like the wall time), the
Glance and Keystone worker processes' (/proc/<pid>/stat before and after
each run) and everything else on the machine ("other": /proc/stat busy
time minus those; it shows how noisy the run was). "bound" is the
shortest wall time the cores allow for that work, (client + cloud CPU) /
cores: a method whose bound exceeds curl+sync's wall / 0.9 cannot reach
0.9x curl+sync here, whatever its code does. "tight" also counts the part
that does not depend on the image size (start-up beyond `openstack
--version`, authentication, look-ups, exit: the same methods on a
--fixed-mib image) as serial, since it runs before or after the transfer
and not next to it. A run during which the rest of the machine kept more
than --max-other cores busy is repeated (up to --attempts tries).

    eval "$(tools/minicloud env)"
    .venv/bin/python benchmarks/image_save.py [--size-mib 1024] [--runs 7]

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

import local_cloud

MiB = 1024 * 1024
HERE = os.path.dirname(os.path.abspath(__file__))
OPENSTACK = os.path.join(os.path.dirname(sys.executable), 'openstack')


#: cloud services whose CPU counts against the same cores (gunicorn
#: workers of the minicloud; pgrep -f patterns)
SERVICES = {
    'glance': r'gunicorn: .*wsgi_glance',
    'keystone': r'gunicorn: .*wsgi_keystone',
}
TICK = os.sysconf('SC_CLK_TCK')


def service_pids():
    """{service: [pid, ...]} of the cloud processes found now."""
    found = {}
    for name, pattern in SERVICES.items():
        res = subprocess.run(['pgrep', '-f', pattern], capture_output=True,
                             text=True, check=False)
        found[name] = [int(p) for p in res.stdout.split()]
    return found


def proc_cpu(pid):
    """user+sys CPU seconds of a process (all its threads) so far."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            # the command name may hold spaces: the fields follow its ')'
            fields = f.read().rsplit(')', 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def busy_cpu():
    """CPU seconds the whole machine spent busy (not idle, not iowait)."""
    with open('/proc/stat') as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICK


def cloud_cpu(pids):
    return {name: sum(proc_cpu(p) for p in plist)
            for name, plist in pids.items()}


def run_measured(argv, env=None, pids=None):
    """Run argv; return (seconds, peak RSS in MiB, CPU seconds).

    CPU: {'client': user+sys of argv and its children, one key per cloud
    service in ``pids``, 'other': the rest of the machine's busy time}.
    """
    pids = pids or {}
    cloud0, busy0 = cloud_cpu(pids), busy_cpu()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    cloud1, busy1 = cloud_cpu(pids), busy_cpu()
    stderr = proc.stderr.read().decode(errors='replace')
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f'{argv!r} failed ({proc.returncode}):\n{stderr}')
    cpu = {'client': usage.ru_utime + usage.ru_stime}
    for name in pids:
        cpu[name] = cloud1[name] - cloud0[name]
    cpu['other'] = max(0.0, busy1 - busy0 - sum(cpu.values()))
    return elapsed, usage.ru_maxrss / 1024.0, cpu


def make_image(conn, size_mib, workdir, name='osc-backup-bench-image-save'):
    path = os.path.join(workdir, 'source.raw')
    with open(path, 'wb') as f:
        for _ in range(size_mib):
            f.write(os.urandom(MiB))
    print(f'uploading a {size_mib} MiB random image ...', file=sys.stderr)
    image = conn.image.create_image(
        name=name, filename=path,
        disk_format='raw', container_format='bare', wait=True,
        validate_checksum=False, allow_duplicates=True)
    os.unlink(path)
    image = conn.image.wait_for_status(image, 'active', wait=600)
    return image


def print_cpu_budget(methods, med, cpus, cores, start_up_cpu, fixed,
                     fixed_mib):
    """The CPU each method used and the wall time the cores allow.

    bound: (client + cloud CPU) / cores, as if all of it could run in
    parallel. tight: the size-independent part (measured on a small image:
    start-up beyond `openstack --version`, authentication, look-ups, exit)
    runs before or after the transfer, not next to it, so it is added in
    full: fixed wall + (CPU - fixed CPU) / cores.
    """
    keys = list(cpus[next(iter(methods))][0])
    services = [k for k in keys if k not in ('client', 'other')]
    print(f'\nCPU seconds, medians ({cores} cores; the openstack commands '
          f'without the {start_up_cpu:.2f}s of `openstack --version`)')
    head = (f'{"method":14s} {"client":>7s} ' +
            ' '.join(f'{s:>8s}' for s in services) +
            f' {"other":>6s} {"bound s":>8s}')
    if fixed:
        head += f' {"fixed s":>8s} {"tight s":>8s}'
    print(head + f' {"wall s":>7s}')
    bound, tight = {}, {}
    for name in methods:
        col = {k: statistics.median(c[k] for c in cpus[name]) for k in keys}
        # the median of the per-run sums: the bound of a typical run
        work = statistics.median(_work(c) for c in cpus[name])
        bound[name] = work / cores
        line = (f'{name:14s} {col["client"]:7.2f} ' +
                ' '.join(f'{col[s]:8.2f}' for s in services) +
                f' {col["other"]:6.2f} {bound[name]:8.2f}')
        if fixed:
            f_wall, f_work = fixed[name]
            tight[name] = f_wall + max(0.0, work - f_work) / cores
            line += f' {f_wall:8.2f} {tight[name]:8.2f}'
        print(line + f' {med[name]:7.2f}')
    if 'curl+sync' not in med:
        return
    target = med['curl+sync'] / 0.9
    print(f'\nbound = (client + cloud CPU) / {cores} cores', end='')
    if fixed:
        print(f'; fixed = the wall time on a {fixed_mib} MiB image; tight = '
              f'fixed + (CPU - its CPU on the small image) / {cores}', end='')
    print(f'.\n0.9x curl+sync ({med["curl+sync"]:.2f}s) means <= '
          f'{target:.2f}s')
    best = tight or bound
    for name in methods:
        if name == 'curl+sync':
            continue
        verdict = 'possible' if best[name] <= target else 'impossible'
        print(f'{name:14s} lower bound {best[name]:.2f}s: at most '
              f'{med["curl+sync"] / best[name]:.2f}x curl+sync on these '
              f'cores (0.9x {verdict})')


def _work(cpu):
    """CPU seconds of the client and the cloud services in a run."""
    return sum(v for k, v in cpu.items() if k != 'other')


def measure(methods, image, runs, args, out, env, pids, start_up,
            start_up_cpu):
    """Run every method ``runs`` times, interleaved, on ``image``."""
    size = image.size
    times = {k: [] for k in methods}
    rss = {k: [] for k in methods}
    cpus = {k: [] for k in methods}
    repeated = disturbed = 0
    for r in range(runs):
        for name, (argv, is_cli) in methods.items():
            for attempt in range(1, args.attempts + 1):
                workdir = os.path.dirname(out)
                for f in os.listdir(workdir):
                    path = os.path.join(workdir, f)
                    if f.startswith(('out.raw', '.out.raw')):
                        if os.path.isdir(path):  # .out.raw.partial/
                            shutil.rmtree(path)
                        else:
                            os.unlink(path)
                os.sync()  # nobody else's dirty pages in our timing
                seconds, peak, cpu = run_measured(argv(image), env, pids)
                if os.path.getsize(out) != size:
                    raise SystemExit(f'{name}: wrong size')
                load = cpu['other'] / seconds  # the whole run's wall
                quiet = not args.max_other or load <= args.max_other
                if quiet or attempt == args.attempts:
                    break
                repeated += 1
                print(f'run {r + 1} {name:14s} disturbed (others kept '
                      f'{load:.2f} cores busy): again', file=sys.stderr)
            if not quiet:
                disturbed += 1
            if is_cli:
                seconds -= start_up
                cpu['client'] -= start_up_cpu
            times[name].append(seconds)
            rss[name].append(peak)
            cpus[name].append(cpu)
            print(f'run {r + 1} {name:14s} {seconds:6.2f}s '
                  f'{size / MiB / seconds:7.1f} MiB/s '
                  f'peak RSS {peak:6.1f} MiB  CPU ' +
                  ' '.join(f'{k} {v:.2f}' for k, v in cpu.items()),
                  file=sys.stderr)
    return times, rss, cpus, repeated, disturbed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cloud', default='minicloud')
    parser.add_argument('--size-mib', type=int, default=1024)
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--image', help='use this image, do not create one')
    parser.add_argument('--keep-image', action='store_true')
    parser.add_argument('--only', action='append',
                        help='run only these methods (repeatable)')
    parser.add_argument('--max-other', type=float, default=0.3,
                        metavar='CORES',
                        help='repeat a run during which the rest of the '
                        'machine kept more than this many cores busy on '
                        'average (another tenant was busy; default 0.3, '
                        '0 repeats none)')
    parser.add_argument('--attempts', type=int, default=5,
                        help='at most this many tries per run when it is '
                        'disturbed; the last one counts (flagged)')
    parser.add_argument('--fixed-mib', type=int, default=1,
                        help='also run the methods on an image of this '
                        'size (MiB) to measure what does not depend on the '
                        'size (start-up, authentication, look-ups, exit) '
                        'for the tight bound; 0 skips it')
    parser.add_argument('--workdir', default=None,
                        help='where the files go (default: a new folder '
                        'in /var/tmp, on the same disk as a user would '
                        'save to)')
    args = parser.parse_args()

    conn = local_cloud.connect(args.cloud)
    workdir = args.workdir or tempfile.mkdtemp(prefix='osc-backup-bench-',
                                               dir='/var/tmp')
    os.makedirs(workdir, exist_ok=True)
    created = created_small = None
    try:
        if args.image:
            image = conn.image.get_image(args.image)
        else:
            image = created = make_image(conn, args.size_mib, workdir)
        size = image.size
        base = conn.image.get_endpoint().rstrip('/')
        if not base.endswith('/v2'):
            base += '/v2'
        out = os.path.join(workdir, 'out.raw')
        env = dict(os.environ)
        os_ = [OPENSTACK, '--os-cloud', args.cloud]

        def curl(img):
            token = conn.session.get_token()
            url = f'{base}/images/{img.id}/file'
            return ['sh', '-c',
                    'curl -sS --fail -o "$0" -H "X-Auth-Token: $1" "$2" '
                    '&& sync "$0"', out, token, url]

        methods = {
            'curl+sync': (curl, False),
            'image-save': (lambda img: [
                *os_, 'image', 'save', '--file', out, img.id], True),
            'image-save-1M': (lambda img: [
                *os_, 'image', 'save', '--chunk-size', str(MiB), '--file',
                out, img.id], True),
            'backup-save': (lambda img: [
                *os_, 'backup', 'image', 'save', '--overwrite', '--file',
                out, img.id], True),
        }
        if args.only:
            methods = {k: v for k, v in methods.items() if k in args.only}

        pids = service_pids()
        if not pids['glance']:
            print('no Glance gunicorn worker found: its CPU is not '
                  'counted', file=sys.stderr)
        cores = len(os.sched_getaffinity(0))

        startup, startup_cpu = [], []
        for _ in range(5):
            seconds, _peak, cpu = run_measured([OPENSTACK, '--version'], env)
            startup.append(seconds)
            startup_cpu.append(cpu['client'])
        start_up = statistics.median(startup)
        start_up_cpu = statistics.median(startup_cpu)
        print(f'openstack --version: median {start_up:.2f}s, CPU '
              f'{start_up_cpu:.2f}s (subtracted from the openstack '
              'commands)', file=sys.stderr)

        times, rss, cpus, repeated, disturbed = measure(
            methods, image, args.runs, args, out, env, pids,
            start_up, start_up_cpu)
        fixed = {}
        if args.fixed_mib:
            small = created_small = make_image(
                conn, args.fixed_mib, workdir,
                name='osc-backup-bench-image-save-small')
            print(f'fixed costs: the same methods on a {args.fixed_mib} MiB '
                  'image', file=sys.stderr)
            f_times, _rss, f_cpus, _rep, _dist = measure(
                methods, small, 5, args, out, env, pids, start_up,
                start_up_cpu)
            for name in methods:
                fixed[name] = (
                    statistics.median(f_times[name]),
                    statistics.median(_work(c) for c in f_cpus[name]))

        print(f'\n{size / MiB:.0f} MiB image, {args.runs} runs, medians '
              f'(CLI start-up {start_up:.2f}s subtracted)')
        if args.max_other:
            print(f'{repeated} disturbed runs repeated (others kept > '
                  f'{args.max_other:g} cores busy), {disturbed} still '
                  f'disturbed after {args.attempts} tries')
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
        print_cpu_budget(methods, med, cpus, cores, start_up_cpu, fixed,
                         args.fixed_mib)
    finally:
        if created_small is not None:
            conn.image.delete_image(created_small, ignore_missing=True)
        if created is not None and not args.keep_image:
            conn.image.delete_image(created, ignore_missing=True)
        elif created is not None:
            print(f'kept image {created.id}', file=sys.stderr)
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == '__main__':
    main()
