"""``python -m compressor ...`` runs the `compress` command."""
from .cli import main_entry

main_entry()
