import sys

from pymesh.cli import main

sys.exit(main())
