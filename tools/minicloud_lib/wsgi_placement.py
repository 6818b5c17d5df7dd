"""gunicorn entry point: Placement, from $MINICLOUD_ETC/placement."""
import os

os.environ['OS_PLACEMENT_CONFIG_DIR'] = os.path.join(
    os.environ['MINICLOUD_ETC'], 'placement')

from placement.wsgi.api import application  # noqa: F401
