"""One module per unit kind; importing this package registers them all in `UNIT_KINDS` (ray_jobs.units.base).

A new kind of work is one file here with a class decorated `@UNIT_KINDS.register_module()`: nothing else lists it.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
