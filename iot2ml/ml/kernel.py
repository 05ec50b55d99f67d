"""Kernels for the notebooks iot2ml runs itself (papermill stages, tests), talking over CurveZMQ-encrypted sockets.

The kernel manager provisions the keys, so ipykernel has no reason to warn "Kernel is running over TCP without
encryption" on every stage. Use it from papermill with `papermill --engine iot2ml ...` (the `papermill.engine` entry
point), or pass `EncryptedKernelManager` as `kernel_manager_class` to an nbclient `NotebookClient`."""
from __future__ import annotations
from functools import cache
from jupyter_client import AsyncKernelManager
from traitlets import default

__all__ = ['EncryptedKernelManager', 'PapermillEngine']


class EncryptedKernelManager(AsyncKernelManager):
    "An nbclient kernel manager that provisions CurveZMQ keys when the kernelspec supports them (ipykernel >= 7 does)."
    @default('transport_encryption')
    def _transport_encryption_default(self): return 'auto'


@cache
def _nbclient_engine():
    # papermill imports its entry-point engines while `import papermill` runs, so this module may not import papermill
    from papermill.engines import NBClientEngine
    class Engine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
            return super().execute_managed_notebook(nb_man, kernel_name, kernel_manager_class=EncryptedKernelManager,
                                                    **kwargs)
    return Engine


class PapermillEngine:
    "papermill's nbclient engine on `EncryptedKernelManager` (`papermill --engine iot2ml`)."
    @classmethod
    def execute_notebook(cls, *args, **kwargs): return _nbclient_engine().execute_notebook(*args, **kwargs)
    @classmethod
    def nb_kernel_name(cls, *args, **kwargs): return _nbclient_engine().nb_kernel_name(*args, **kwargs)
    @classmethod
    def nb_language(cls, *args, **kwargs): return _nbclient_engine().nb_language(*args, **kwargs)
