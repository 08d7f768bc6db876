"""One module per registered dataset; importing this package registers them all (see benchmark.registry).

A new dataset is one file here with a class decorated `@DATASETS.register_module()`: nothing else lists it.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
