"""``python -m MnetImSegmentLib.cli``: the same as ``mnetim``."""

import sys

from . import main

sys.exit(main())
