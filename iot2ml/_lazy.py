"""Lazy re-exports for the subpackages (hand-written): `from iot2ml.lake import Lake` works, and importing a room
imports none of its modules until a name is asked for, so `iot2ml --help` stays light."""
import importlib

def lazy_exports(package:str, modules:list[str]):
    "A module `__getattr__` and `__dir__` for `package` that find a public name in `modules` (in order) on first use."
    def __getattr__(name:str):
        if not name.startswith('_'):
            for m in modules:
                mod = importlib.import_module(f"{package}.{m}")
                if name in getattr(mod, '__all__', ()): return getattr(mod, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    def __dir__(): return sorted(modules)
    return __getattr__, __dir__
