"""One module per registered attack; importing this package registers them all (see benchmark.registry).

A new attack is one file here with a class decorated `@ATTACKS.register_module()`: nothing else lists it.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
