"""gunicorn entry point: Barbican API.

Barbican (and its simple_crypto plugin) read only oslo.config's default
locations, so the launcher points HOME at a folder whose
.barbican/barbican.conf is the real file.
"""
import os

from paste.deploy import loadapp

application = loadapp(
    'config:' + os.path.join(os.environ['MINICLOUD_ETC'], 'barbican',
                             'barbican-api-paste.ini'),
    name='main')
