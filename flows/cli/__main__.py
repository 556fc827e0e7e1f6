"""`python -m flows.cli`: the `cqrsflow` command."""

import sys

from flows.cli._main import main

sys.exit(main())
