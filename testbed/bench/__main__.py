"""`python -m testbed.bench`: see testbed.bench.runner."""

from testbed.bench.runner import main

raise SystemExit(main())
