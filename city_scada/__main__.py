"""``python -m city_scada run|check|reload|demo|...``: the ``scada`` command."""

import sys

from city_scada import main

sys.exit(main())
