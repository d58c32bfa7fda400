"""Everything that executes CUDA: the CuPy backend and what it needs.

Nothing outside this package imports CuPy or loads a CUDA library; the rest of gpumlp reaches
it through the :class:`~gpumlp.backends.base.Backend` interface.  Importing this package (or
any of its modules) never imports CuPy or touches a GPU: CuPy is imported when a CuPy backend
is made.
"""
