"""gunicorn entry point: Glance API, configured from $MINICLOUD_ETC/glance."""
import os

os.environ['OS_GLANCE_CONFIG_DIR'] = os.path.join(
    os.environ['MINICLOUD_ETC'], 'glance')

from glance.wsgi.api import application  # noqa: F401
