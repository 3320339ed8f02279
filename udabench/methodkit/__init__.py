"""The method kit's building blocks. Methods import them through :mod:`udabench.method`, which
re-exports everything here: a method file imports the kit, never another method or the engine."""
