import sys

from mldcn.cli import main

sys.exit(main())
