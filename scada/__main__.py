import sys

from scada.cli import main

sys.exit(main())
