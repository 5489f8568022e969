"""`python3 -m loraplane.merge`: the merge init container (merge/main.py)."""

import sys

from loraplane.merge.main import main

sys.exit(main())
