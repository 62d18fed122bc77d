"""A quicker start and exit for a process that imports torch and torchvision (entry scripts, their spawned workers).

Those imports leave about a million objects that live as long as the process. While they load, the cycle collector
scans them again and again, and at interpreter exit it walks them once more: on 2 CPU cores about 2 s of a 7 s
start-and-exit, paid by every spawned worker. `pause_collector()` before the imports and `imports_done()` after
them move what the imports made out of the collector's reach (`gc.freeze`); whatever the program creates later is
collected as usual. A process forked afterwards (a DataLoader worker) inherits the frozen objects, and with them
fewer copy-on-write pages. Standard library only, so it costs nothing before `import torch`.
"""

from __future__ import annotations

import gc


def pause_collector() -> None:
    """Call first, before the slow imports."""
    gc.disable()


def imports_done() -> None:
    """Call after the imports: they are kept out of every later collection, and collection resumes."""
    gc.freeze()
    gc.enable()
