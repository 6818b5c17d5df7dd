"""gunicorn entry point: Cinder API, configured from $MINICLOUD_ETC/cinder."""
import os
import sys

# cinder.wsgi parses sys.argv[1:] (gunicorn's own arguments otherwise)
sys.argv = ['cinder-api', '--config-file',
            os.path.join(os.environ['MINICLOUD_ETC'], 'cinder', 'cinder.conf')]

from cinder.wsgi.api import application  # noqa: E402,F401
