// novolstm C forward runtime: what the NumPy backend's compiled step loop adds to the portable
// part of runtime.h (the activations and row kernels the torch kernels use, no ATen).
//
// Inlined after that part into every kernel c_forward.py generates, so that a kernel is one
// source file built by the system compiler alone: no framework, no BLAS. At the sizes of one
// step (a few rows times a few hundred columns) a register-blocked loop costs less than handing
// the product to a BLAS, whose per-call overhead is the step's whole budget at batch 1.

namespace novolstm_c {

// The widest vector the build targets (GCC and Clang vector extensions: the compiler picks the
// instructions, and every lane does what the scalar code would).
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(kVecBytes)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(kVecBytes)));
};

template <typename V, typename T>
inline V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);  // an unaligned load
  return v;
}

template <typename V, typename T>
inline void store(T* p, V v) {
  std::memcpy(p, &v, sizeof v);
}

// out[R rows, C vectors of columns] = bias + a[R rows, :] @ w[:, those columns], the sums held in
// registers over the whole of k (R * C accumulators: few enough to stay in registers, enough to
// hide the latency of the multiply-adds).
template <typename T, int R, int C>
inline void block(const T* a, int64_t lda, const T* w, int64_t n, const T* bias, T* out, int64_t k) {
  using V = typename VecOf<T>::type;
  constexpr int L = kVecBytes / sizeof(T);
  V acc[R][C];
  for (int c = 0; c < C; ++c) {
    const V b0 = bias == nullptr ? V{} : load<V>(bias + c * L);
    for (int r = 0; r < R; ++r) acc[r][c] = b0;
  }
  for (int64_t kk = 0; kk < k; ++kk) {
    V wv[C];
    for (int c = 0; c < C; ++c) wv[c] = load<V>(w + kk * n + c * L);
    for (int r = 0; r < R; ++r) {
      const V x = V{} + a[r * lda + kk];  // the scalar broadcast to every lane
      for (int c = 0; c < C; ++c) acc[r][c] += x * wv[c];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) store(out + r * n + c * L, acc[r][c]);
  }
}

// The same product for the columns [j0, n) a whole block does not cover, one row at a time.
template <typename T>
inline void tail(const T* a, int64_t lda, const T* w, int64_t n, const T* bias, T* out, int64_t rows, int64_t k,
                 int64_t j0) {
  for (int64_t b = 0; b < rows; ++b) {
    T* o = out + b * n;
    for (int64_t j = j0; j < n; ++j) o[j] = bias == nullptr ? T(0) : bias[j];
    for (int64_t kk = 0; kk < k; ++kk) {
      const T ab = a[b * lda + kk];
      const T* wr = w + kk * n;
      for (int64_t j = j0; j < n; ++j) o[j] += ab * wr[j];
    }
  }
}

// out (rows, n) = bias + a (rows, k; rows lda apart) @ w (k, n; row-major). Every output element
// is its bias plus the terms in the order of k, whichever block computes it.
template <typename T>
inline void gemm_rows(const T* a, int64_t lda, const T* w, const T* bias, T* out, int64_t rows, int64_t k,
                      int64_t n) {
  constexpr int L = kVecBytes / sizeof(T);
  constexpr int C = kVecBytes == 64 ? 4 : 2;  // vectors of columns per block of 4 rows
  int64_t j = 0;
  for (; j + 2 * C * L <= n; j += 2 * C * L) {  // blocks of 2C vectors: one row, more sums in flight
    int64_t b = 0;
    for (; b + 4 <= rows; b += 4) {
      block<T, 4, C>(a + b * lda, lda, w + j, n, bias == nullptr ? nullptr : bias + j, out + b * n + j, k);
      block<T, 4, C>(a + b * lda, lda, w + j + C * L, n, bias == nullptr ? nullptr : bias + j + C * L,
                     out + b * n + j + C * L, k);
    }
    for (; b < rows; ++b) {
      block<T, 1, 2 * C>(a + b * lda, lda, w + j, n, bias == nullptr ? nullptr : bias + j, out + b * n + j, k);
    }
  }
  if (j + C * L <= n) {  // one block of C vectors left (NovoLSTM's five blocks of 64 units in float)
    int64_t b = 0;
    for (; b + 4 <= rows; b += 4) {
      block<T, 4, C>(a + b * lda, lda, w + j, n, bias == nullptr ? nullptr : bias + j, out + b * n + j, k);
    }
    for (; b < rows; ++b) {
      block<T, 1, C>(a + b * lda, lda, w + j, n, bias == nullptr ? nullptr : bias + j, out + b * n + j, k);
    }
    j += C * L;
  }
  if (j < n) tail(a, lda, w, n, bias, out, rows, k, j);
}

// A masked step (on false) writes zeros to the output row and keeps the state row: the generated
// loop's rule (np.where(m, new, 0.0) and np.where(m, new, old)).
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
