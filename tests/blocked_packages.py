"""Child-process preamble that makes this project's packages unimportable (remote-code tests).

A test that checks an artifact loads *without* our package runs a fresh interpreter whose script starts with
:data:`BLOCK_PROJECT`: a meta-path finder that refuses every top-level package of this repository, so any
import of ours fails loudly instead of being satisfied from the checkout or the editable install.
"""

BLOCK_PROJECT = '''
import importlib.abc, sys
BLOCKED = {"modeling_afine", "dataset_scripts", "training", "pipelines", "afine_apps", "tests", "spaces"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked for this test: {name}")
        return None

sys.meta_path.insert(0, Block())
'''
