"""The backup schedule of every connector's state database (DESIGN §6) lands with the backups issue."""
