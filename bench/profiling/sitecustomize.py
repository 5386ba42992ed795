"""Profile a child process with pyinstrument when ``SK_PROFILE_OUT`` names a directory.

``bench/ingest.py --profile DIR`` puts this directory first on the children's
``PYTHONPATH``: each ``stockkeeper run <service>`` then writes ``DIR/<pid>-run-<service>.txt``
(wall-clock samples of the whole thread, idle included) when it exits.
"""

import atexit
import os
import sys

_out = os.environ.get("SK_PROFILE_OUT")
if _out:
    from pyinstrument import Profiler

    _profiler = Profiler(interval=0.002, async_mode="disabled")
    _profiler.start()

    def _write() -> None:
        _profiler.stop()
        name = "-".join(a for a in sys.argv[1:3] if not a.startswith("-"))
        with open(os.path.join(_out, f"{os.getpid()}-{name}.txt"), "w") as f:
            f.write(_profiler.output_text(unicode=False, color=False))

    atexit.register(_write)
