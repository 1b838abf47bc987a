"""Store backends. Import from ``jupyter_ystore`` rather than from here."""
