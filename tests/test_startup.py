"""ops/startup.py in the entry scripts: the cycle collector is paused during their imports and enabled again after,
with the imported objects frozen. A script that paused it and never resumed it would run a whole training without
cycle collection (memory that only grows); one that never froze its imports pays seconds per spawned worker."""

from __future__ import annotations

import json

from conftest import run_script

# Run as a spawned worker (`__mp_main__`: imports only) or as `__main__ --help` (imports, then argparse exits).
SCRIPTS = [("main_clsa.py", "__mp_main__"), ("lincls.py", "__mp_main__"), ("finetune.py", "__mp_main__"),
           ("demo.py", "__main__"), ("export_backbone.py", "__main__"), ("upgrade_checkpoint.py", "__main__"),
           ("VOC_CLF/main.py", "__main__"), ("detection/train_net.py", "__main__")]

DRIVER = """
import contextlib, gc, io, json, runpy, sys
out = {}
for path, name in json.loads(sys.argv[1]):
    before = gc.get_freeze_count()
    sys.argv = [path, "--help"]
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_path(path, run_name=name)
        except SystemExit:
            pass
    out[path] = [gc.isenabled(), gc.get_freeze_count() - before]
    gc.unfreeze()
print(json.dumps(out))
"""


def test_entry_scripts_resume_the_collector_and_freeze_their_imports():
    done = run_script(["-c", DRIVER, json.dumps(SCRIPTS)], env={"PYTHONPATH": "."})
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads(done.stdout.strip().splitlines()[-1])
    for path, _ in SCRIPTS:
        enabled, frozen = state[path]
        assert enabled, f"{path} leaves the cycle collector disabled after its imports"
        assert frozen > 1000, f"{path} froze {frozen} objects: imports_done() missing?"


def test_pause_then_done_freezes_what_was_imported_meanwhile():
    done = run_script(["-c", "import gc; from ops.startup import imports_done, pause_collector; pause_collector(); "
                       "assert not gc.isenabled(); import decimal, email.parser; imports_done(); "
                       "print(gc.isenabled(), gc.get_freeze_count())"], env={"PYTHONPATH": "."})
    assert done.returncode == 0, done.stderr
    enabled, frozen = done.stdout.split()
    assert enabled == "True" and int(frozen) > 0
