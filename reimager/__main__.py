"""`python -m reimager`: the same as the `reimager` console script."""

import sys

from reimager.app import main

sys.exit(main())
