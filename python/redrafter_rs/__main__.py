"""`python -m redrafter_rs ...` == the `redrafter` command."""

import sys

from redrafter_rs.cli import main

sys.exit(main())
