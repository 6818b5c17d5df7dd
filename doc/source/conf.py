# Sphinx configuration for osc-backup.

extensions = [
    'openstackdocstheme',
    'cliff.sphinxext',
]

openstackdocs_repo_name = 'openstack/osc-backup'
openstackdocs_use_storyboard = False
openstackdocs_auto_name = False

project = 'osc-backup'
copyright = '2026, osc-backup developers'
master_doc = 'index'
source_suffix = '.rst'
exclude_patterns = []
pygments_style = 'native'
html_theme = 'openstackdocs'

autoprogram_cliff_application = 'openstack'
autoprogram_cliff_ignored = [
    '--help',
    '--format',
    '--column',
    '--max-width',
    '--fit-width',
    '--print-empty',
    '--prefix',
    '--noindent',
    '--quote',
    '--sort-column',
    '--sort-ascending',
    '--sort-descending',
]
