"""Lets `python -m generate_dataset_json NAME --root DIR` run the command."""

import sys

from .cli import main

sys.exit(main())
