// novolstm C forward runtime: what the NumPy backend's compiled step loop adds to the portable
// part of runtime.h (the activations and row kernels the torch kernels use, no ATen).
//
// Inlined after that part into every kernel c_forward.py generates, so that a kernel is one
// source file built by the system compiler alone: no framework, no BLAS. At the sizes of one
// step (a few rows times a few hundred columns) a plain loop that the compiler vectorizes
// costs less than handing the product to a BLAS, whose per-call overhead is the step's whole
// budget at batch 1.

namespace novolstm_c {

// Columns of the output tile one pass over the weight accumulates: the tile of a few rows stays
// in L1 while every row of the weight streams through once per tile.
constexpr int64_t kTileCols = 256;

// out (rows, n) = bias + a (rows, k; rows lda apart) @ w (k, n; row-major). Each output element
// sums over k in order, one multiply and one add a term (the build has no -ffast-math and no FMA
// contraction), so the result does not depend on the tiling.
template <typename T>
inline void gemm_rows(const T* a, int64_t lda, const T* w, const T* bias, T* out, int64_t rows, int64_t k,
                      int64_t n) {
  for (int64_t j0 = 0; j0 < n; j0 += kTileCols) {
    const int64_t cols = std::min(kTileCols, n - j0);
    for (int64_t b = 0; b < rows; ++b) {
      T* o = out + b * n + j0;
      if (bias != nullptr) {
        std::memcpy(o, bias + j0, sizeof(T) * cols);
      } else {
        std::fill(o, o + cols, T(0));
      }
    }
    for (int64_t kk = 0; kk < k; ++kk) {
      const T* wr = w + kk * n + j0;
      for (int64_t b = 0; b < rows; ++b) {
        const T ab = a[b * lda + kk];
        T* o = out + b * n + j0;
        for (int64_t j = 0; j < cols; ++j) o[j] += ab * wr[j];
      }
    }
  }
}

// A masked step (mask[b] false) writes zeros to the output row and keeps the state row: the
// generated loop's rule (np.where(m, new, 0.0) and np.where(m, new, old)).
template <typename T>
inline void store_row(T* dst, const T* src, const T* otherwise, bool on, int64_t n) {
  if (on) {
    if (src != dst) std::memcpy(dst, src, sizeof(T) * n);
  } else if (otherwise != nullptr) {
    if (otherwise != dst) std::memcpy(dst, otherwise, sizeof(T) * n);
  } else {
    std::fill(dst, dst + n, T(0));
  }
}

}  // namespace novolstm_c
