"""The compiled path: a spec's whole sequence, forward and backward, as one C++ kernel.

``emit`` renders a spec's loop plan into C++ over ATen (``runtime.h`` holds the shared
row kernels and is inlined into each kernel); ``torch_ext`` builds it with
``torch.utils.cpp_extension``, caches it on disk and exposes it as torch operators
with autograd and fake implementations. Importing this package imports no framework.
"""
