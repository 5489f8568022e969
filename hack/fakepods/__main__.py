"""``python -m fakepods``: FAKE pods for the operator-only benchmark (see __init__)."""

import sys

from fakepods import main

sys.exit(main())
