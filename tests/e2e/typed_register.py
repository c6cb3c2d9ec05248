"""A preload module: registers the typed-values tests' custom type in each worker."""

import importlib

importlib.import_module("typed_helpers").register()
