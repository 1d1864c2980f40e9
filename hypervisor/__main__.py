import sys

from hypervisor.main import main

sys.exit(main())
