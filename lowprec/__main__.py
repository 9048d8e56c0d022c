"""`python -m lowprec ...` runs the command-line interface (the same as the `lowprec` script)."""

import sys

from lowprec.cli import main

sys.exit(main())
