import os
import sys

from .cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
    # A torchrun worker whose work is done (files written, process group destroyed) ends here, without the
    # interpreter's teardown: gloo's threads can still be freeing finished collectives then, and one that
    # takes the GIL during teardown aborts the process ("terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
