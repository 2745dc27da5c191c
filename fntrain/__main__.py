import sys

from fntrain.cli import main

sys.exit(main())
