"""The module names of iot2ml 0.1's flat layout (`iot2ml.models`, `iot2ml.detect`, ...), kept as aliases of their new
homes, so a model bundle pickled before the move into subpackages still loads (pickle stores module paths).
Hand-written. An alias is imported only when something asks for it."""
import importlib, importlib.abc, importlib.util, sys

OLD_NAMES = {  # iot2ml 0.1 module -> its module now
    'config': 'config', 'plots': 'plots', 'schema': 'schema', 'simulate': 'sim.fleet', 'live': 'sim.live',
    'lake': 'lake.store', 'explore': 'lake.explore', 'parse': 'ingest.parse', 'registry': 'ingest.devices',
    'state': 'ingest.state', 'ingest': 'ingest.routing', 'spool': 'ingest.spool', 'features': 'ml.features',
    'evaluate': 'ml.evaluate', 'models': 'ml.models', 'detect': 'ml.detect', 'report': 'ml.report',
    'pipeline': 'ml.pipeline', 'mlregistry': 'ml.registry', 'retrain': 'ml.retrain', 'kernel': 'ml.kernel',
    'service': 'serve.runtime', 'api': 'serve.http', 'mqtt': 'serve.mqtt', 'scoring': 'serve.scoring',
    'cli': 'cli.main', 'devices_cli': 'cli.devices', 'deadletters_cli': 'cli.deadletters', 'models_cli': 'cli.models'}
# Names that are a subpackage now (`iot2ml.lake`, `iot2ml.ingest`, `iot2ml.cli`) import as the subpackage; unpickling
# still finds the old classes there through the subpackage's lazy re-exports.
_SAME = ('config', 'plots', 'schema', 'lake', 'ingest', 'cli')   # still a module or a subpackage of that name
_FLAT = {f"iot2ml.{k}": f"iot2ml.{v}" for k, v in OLD_NAMES.items() if k not in _SAME}

class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    "Import `iot2ml.<old name>` as the module that now holds its code (the same module object, not a copy)."
    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in _FLAT else None
    def create_module(self, spec): return importlib.import_module(_FLAT[spec.name])
    def exec_module(self, module):
        "Nothing to run: the module ran under its new name; the import system files it under the old one too."


def install() -> None:
    "Add the alias finder once (at the end of `sys.meta_path`: it answers only for the old names)."
    if not any(isinstance(f, _Alias) for f in sys.meta_path): sys.meta_path.append(_Alias())
