"""nova-compute with the minicloud's virt driver (novadriver.py).

Nova 34 imports a compute_driver only as ``nova.virt.<compute_driver>``;
this launcher (``python -m minicloud_lib.nova_compute --config-file ...``)
makes ``compute_driver = minicloud_lib.novadriver.DiskFakeDriver`` resolve
to tools/minicloud_lib/novadriver.py, then runs Nova's own nova-compute.
"""
import sys

# first: it sets up Nova's concurrency backend (threading), as the
# nova-compute console script does
from nova.cmd import compute  # isort: skip

import minicloud_lib
from minicloud_lib import novadriver

sys.modules['nova.virt.minicloud_lib'] = minicloud_lib
sys.modules['nova.virt.minicloud_lib.novadriver'] = novadriver

if __name__ == '__main__':
    sys.exit(compute.main())
