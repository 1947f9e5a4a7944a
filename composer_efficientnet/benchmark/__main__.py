"""``python -m composer_efficientnet.benchmark``: run the benchmark (see the package's docstring)."""

import sys

from composer_efficientnet.benchmark import main

sys.exit(main())
