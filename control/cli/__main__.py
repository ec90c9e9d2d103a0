"""`python -m control.cli`: the `tidegate` command (control.cli.main)."""

import sys

from control.cli.main import main

sys.exit(main())
