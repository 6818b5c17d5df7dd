#!/usr/bin/env python3
"""How fast is `openstack backup list` next to `openstack image list`?

On the local minicloud (tools/minicloud up), creates --count (1,000 by
default) cheap *queued* images (no data) that carry osc-backup's record
(``osc_backup_*`` properties, method ``image``, one made-up source volume
ID), then times, interleaved, --runs times:

  backup-list  openstack backup list --source <source ID> -f value -c ID
               (one filtered, paginated Glance query; one Cinder backup
               query; the --source look-ups)
  image-list   openstack image list --property
               osc_backup_source_volume_id=<source ID> -f value -c ID
               (the same images, as OSC lists them)

Both must print the same --count IDs. Prints the medians and their ratio
(backup-list / image-list). Every image it created is deleted afterwards,
on failure and Ctrl-C too. Not a test: numbers depend on the machine.

    eval "$(tools/minicloud env)"
    .venv/bin/python benchmarks/catalog_list.py [--count 1000] [--runs 3]

Only talks to 127.0.0.1 (the minicloud). Run as the member user.
"""

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import time
import uuid

import local_cloud

OPENSTACK = os.path.join(os.path.dirname(sys.executable), 'openstack')
NAME = 'osc-backup-bench-catalog'


def record(source_id):
    return {
        'osc_backup_tool': 'osc-backup',
        'osc_backup_method': 'image',
        'osc_backup_run_id': uuid.uuid4().hex[:12],
        'osc_backup_created_at': datetime.datetime.now(
            datetime.UTC).isoformat(timespec='seconds'),
        'osc_backup_consistency': 'offline',
        'osc_backup_source_volume_id': source_id,
        'osc_backup_source_volume_name': NAME,
    }


def create_images(conn, count, source_id, created):
    for n in range(count):
        body = {'name': f'{NAME}-{n:04d}', 'disk_format': 'raw',
                'container_format': 'bare', **record(source_id)}
        resp = conn.image.post('/images', json=body)
        if resp.status_code != 201:
            raise SystemExit(f'creating an image failed: HTTP '
                             f'{resp.status_code} {resp.text[:200]}')
        created.append(resp.json()['id'])
        if (n + 1) % 100 == 0:
            print(f'created {n + 1} images', file=sys.stderr)


def delete_images(conn, created):
    failed = []
    for image_id in created:
        resp = conn.image.delete(f'/images/{image_id}')
        if resp.status_code not in (204, 404):
            failed.append(image_id)
    if failed:
        print(f'could not delete {len(failed)} images: '
              f'openstack image delete {" ".join(failed)}', file=sys.stderr)
    else:
        print(f'deleted the {len(created)} images', file=sys.stderr)


def timed(argv, env):
    start = time.perf_counter()
    p = subprocess.run(argv, env=env, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - start
    if p.returncode != 0:
        raise SystemExit(f'{" ".join(argv)} failed: {p.stderr[-500:]}')
    return wall, set(p.stdout.split())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--cloud', default='minicloud')
    parser.add_argument('--count', type=int, default=1000)
    parser.add_argument('--runs', type=int, default=3)
    args = parser.parse_args()

    conn = local_cloud.connect(args.cloud)
    source_id = str(uuid.uuid4())
    env = dict(os.environ)
    base = [OPENSTACK, '--os-cloud', args.cloud]
    methods = {
        'backup-list': [*base, 'backup', 'list', '--source', source_id,
                        '-f', 'value', '-c', 'ID'],
        'image-list': [*base, 'image', 'list', '--property',
                       f'osc_backup_source_volume_id={source_id}',
                       '-f', 'value', '-c', 'ID'],
    }
    created = []
    try:
        create_images(conn, args.count, source_id, created)
        times = {m: [] for m in methods}
        for run in range(args.runs):
            for method, argv in methods.items():
                wall, ids = timed(argv, env)
                if ids != set(created):
                    raise SystemExit(
                        f'{method} listed {len(ids)} IDs, expected the '
                        f'{len(created)} created')
                times[method].append(wall)
                print(f'run {run + 1} {method}: {wall:.2f} s',
                      file=sys.stderr)
    finally:
        delete_images(conn, created)
    med = {m: statistics.median(t) for m, t in times.items()}
    for method, value in med.items():
        print(f'{method:12} median {value:.2f} s over {args.runs} runs '
              f'({args.count} images)')
    print(f'ratio backup-list / image-list: '
          f'{med["backup-list"] / med["image-list"]:.2f}')


if __name__ == '__main__':
    main()
