"""Built-in processes (the dispatcher, pipeline, machine, servers) land here; imported lazily.

Nothing in the core imports this package, so ``import nacelle_py`` stays as
cheap as importing its dependencies.
"""

__all__: list[str] = []
