import sys

from wulian.cli import main

sys.exit(main())
