"""``python -m cli ...`` = ``mind-recall ...``."""

from cli.main import run

run()
