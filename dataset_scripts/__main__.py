"""``python -m dataset_scripts`` = ``afine data``."""

import sys

from .cli import main

sys.exit(main())
