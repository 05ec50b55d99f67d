"""The `iot2ml` command: one module per command group. Importing it imports nothing heavy; each command imports
what it needs when it runs."""
from .main import cli, main
