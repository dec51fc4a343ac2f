"""`python -m bench` is `bench/run`."""

import sys

from bench.cli import main

sys.exit(main())
