"""The Python host's own Python code (microservice-rust), run once as a worker starts."""

import importlib
import importlib.util
import json
import logging
import os
import sys

# logging's level for each of the server's log_level names.
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


def setup(module, *, config_json, log_level, app_dir):
    """Makes `import microservice_rust` give `module`, puts the app's directory first on
    sys.path, and sends print and logging into the server's log."""
    module.config = json.loads(config_json)
    sys.modules["microservice_rust"] = module
    if app_dir and app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    sys.stdout = module._Lines("info", False)
    sys.stderr = module._Lines("warn", True)
    root = logging.getLogger()
    handler = _Handler(module._log)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(LEVELS.get(log_level, logging.INFO))


class _Handler(logging.Handler):
    """Hands each record to the server's log at its own level; a record's traceback stays
    in its line (the line end escaped)."""

    def __init__(self, log):
        super().__init__()
        self._log = log

    def emit(self, record):
        try:
            message = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._log(record.levelno, message)


def load(source, kind):
    """Imports the app: a module by name, or a file as the module named after it (so
    that `Flask(__name__)` finds its directory, and its neighbours import as usual)."""
    if kind == "module":
        return importlib.import_module(source)
    name = os.path.splitext(os.path.basename(source))[0]
    spec = importlib.util.spec_from_file_location(name, source)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {source}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
