"""Jupyter Server settings for the mybinder demo (postBuild copies this to ~/.jupyter/).

Only jupyter_ystore serves collaboration (jupyter_server_ydoc, if some other package pulled
it in, stays off), and every edit goes to an SQLite store in the home folder.
"""

import os

c = get_config()  # noqa: F821  (provided by traitlets when it loads this file)

c.ServerApp.jpserver_extensions.update({"jupyter_ystore": True, "jupyter_server_ydoc": False})

c.YStoreExtension.ystore_class = "jupyter_ystore.stores.sqlite.SQLiteYStore"
c.SQLiteYStore.db_path = os.path.join(os.path.expanduser("~"), ".jupyter_ystore.db")
# Save to the .ipynb one second after the last change (the store has every change at once).
c.YStoreExtension.document_save_delay = 1.0
