"""The compiled paths: a spec's whole sequence as one C++ kernel, for torch and for NumPy.

``emit`` renders a spec's loop plan into C++ over ATen (``runtime.h`` holds the shared
row kernels and is inlined into each kernel); ``torch_ext`` builds it with
``torch.utils.cpp_extension``, caches it on disk and exposes it as torch operators
with autograd and fake implementations. ``c_forward`` renders the forward step loop over
plain pointers (the portable part of ``runtime.h`` and ``c_runtime.h``, no ATen), and
``numpy_ext`` builds it with the system compiler and calls it through ctypes for the NumPy
backend. ``build`` holds what both builders share: their errors, the cache root and the
build lock. Importing this package imports no framework.
"""
