// novolstm C++ runtime: the helpers every generated sequence kernel shares.
//
// Inlined verbatim at the top of each generated translation unit (one per spec), so
// that a kernel's source is one file with no include path of its own. Every row
// function works on one batch row of `n` contiguous elements; the generated code
// calls them inside its loop over rows. The numerics are the ones docs/numerics.md
// pins: overflow-free logistic, max-subtracted softmax over the units axis, LayerNorm
// statistics in two passes with the population variance and the spec's epsilon.
#include <ATen/Dispatch.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <ATen/ops/sum.h>
#include <ATen/TensorOperators.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <tuple>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace novolstm_rt {

// ---- portable: from here to "end portable" no ATen (the NumPy backend's C kernel inlines it, c_forward.py)

// A matrix of rows of `ld` elements apart (ld 0: one row read by every batch row).
template <typename T>
struct View {
  T* p;
  int64_t ld;
  T* row(int64_t b) const { return p + b * ld; }
};

// exp(x) for x <= 0 (every exp the kernels take: of -|x|, -2|x| and x - max x). In float,
// a branch-free range reduction x = n ln2 + r, |r| <= ln2 / 2, and the Taylor polynomial
// of degree 7 (truncation below 1e-8 relative), so that the compiler vectorizes the loops
// that call it; scalar libm expf kept the whole step at libm's pace. In double, std::exp.
inline float exp_nonpositive(float x) {
  const float c = x < -87.0f ? -87.0f : x;  // exp(-87) is the last normal float's order
  const float n = (c * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (c - n * 0.693359375f) - n * -2.12194440e-4f;  // ln2 in two parts
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in [-126, 0]
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const float y = p * scale;
  return x == x ? y : x;  // NaN stays NaN
}

inline double exp_nonpositive(double x) { return std::exp(x); }

// The exact logistic, overflow-free for every finite input: exp only of -|x|.
template <typename T>
inline T sigmoid(T x) {
  const T e = exp_nonpositive(-std::fabs(x));
  const T s = T(1) / (T(1) + e);
  return x >= T(0) ? s : e * s;
}

// tanh from exp(-2|x|); near zero its odd Taylor polynomial (no cancellation in 1 - e).
template <typename T>
inline T tanh(T x) {
  const T a = std::fabs(x);
  const T e = exp_nonpositive(T(-2) * a);
  const T far = (T(1) - e) / (T(1) + e);
  const T a2 = a * a;
  const T near = a * (T(1) + a2 * (T(-1.0 / 3.0) + a2 * (T(2.0 / 15.0) + a2 * T(-17.0 / 315.0))));
  const T y = a < T(0.0625) ? near : far;
  return std::copysign(y, x);
}

inline double tanh(double x) { return std::tanh(x); }

// The newer spec functions, with NumPy's NaN rules: maximum, minimum and clip return a NaN
// argument (a bare comparison would drop it), sign(NaN) is NaN.
template <typename T>
inline T maximum(T a, T b) {
  return a >= b || a != a ? a : b;
}

template <typename T>
inline T minimum(T a, T b) {
  return a <= b || a != a ? a : b;
}

template <typename T>
inline T clip(T z, T lo, T hi) {
  return z < lo ? lo : (z > hi ? hi : z);
}

template <typename T>
inline T sign(T z) {
  return z > T(0) ? T(1) : (z < T(0) ? T(-1) : z);
}

// log(1 + exp(z)) as max(z, 0) + log1p(exp(-|z|)): exp never overflows, no threshold switch.
template <typename T>
inline T softplus(T z) {
  return (z > T(0) ? z : T(0)) + std::log1p(std::exp(-std::fabs(z)));
}

// The exact GELU, z Phi(z) with the standard normal's cdf through erf (not the tanh form).
template <typename T>
inline T gelu(T z) {
  return T(0.5) * z * (T(1) + std::erf(z * T(0.70710678118654752440)));
}

// g (Phi(z) + z phi(z)): the GELU's VJP.
template <typename T>
inline T gelu_grad(T g, T z) {
  const T cdf = T(0.5) * (T(1) + std::erf(z * T(0.70710678118654752440)));
  const T pdf = std::exp(T(-0.5) * z * z) * T(0.39894228040143267794);
  return g * (cdf + z * pdf);
}

// Row reductions with independent partial sums in kLanes lanes: a single running sum is one
// chain of dependent additions (its latency, not the vector units, sets the pace), and the
// compiler may not reorder floating-point sums on its own. The lanes vectorize.
constexpr int64_t kLanes = 16;

template <typename T, typename Term>
inline T lane_sum(int64_t n, Term term) {
  T acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t k = 0; k < kLanes; ++k) acc[k] += term(j + k);
  }
  T s = T(0);
  for (; j < n; ++j) s += term(j);
  for (int64_t k = 0; k < kLanes; ++k) s += acc[k];
  return s;
}

template <typename T>
inline T row_sum(const T* a, int64_t n) {
  return lane_sum<T>(n, [a](int64_t j) { return a[j]; });
}

template <typename T>
inline T row_dot(const T* a, const T* b, int64_t n) {
  return lane_sum<T>(n, [a, b](int64_t j) { return a[j] * b[j]; });
}

template <typename T>
inline T row_max(const T* a, int64_t n) {
  T acc[kLanes];
  for (int64_t k = 0; k < kLanes; ++k) acc[k] = a[0];
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t k = 0; k < kLanes; ++k) acc[k] = acc[k] < a[j + k] ? a[j + k] : acc[k];
  }
  T m = a[0];
  for (; j < n; ++j) m = m < a[j] ? a[j] : m;
  for (int64_t k = 0; k < kLanes; ++k) m = m < acc[k] ? acc[k] : m;
  return m;
}

// softmax over the row, the row maximum subtracted first: no overflow for finite input.
template <typename T>
inline void softmax_row(const T* a, T* o, int64_t n) {
  const T m = row_max(a, n);
  for (int64_t j = 0; j < n; ++j) o[j] = exp_nonpositive(a[j] - m);
  const T inv = T(1) / row_sum(o, n);
  for (int64_t j = 0; j < n; ++j) o[j] *= inv;
}

// y * (g - sum(g * y)): the softmax VJP at output y.
template <typename T>
inline void softmax_grad_row(const T* g, const T* y, T* o, int64_t n) {
  const T s = row_dot(g, y, n);
  for (int64_t j = 0; j < n; ++j) o[j] = y[j] * (g[j] - s);
}

// 1 / sqrt(population variance + eps), the variance of the centred values (two passes).
template <typename T>
inline T inverse_std(const T* z, int64_t n, double eps, T* mean_out) {
  const T mean = row_sum(z, n) / T(n);
  T var = lane_sum<T>(n, [z, mean](int64_t j) { return (z[j] - mean) * (z[j] - mean); });
  var /= T(n);
  *mean_out = mean;
  return T(1) / std::sqrt(var + T(eps));
}

// (z - mean z) / sqrt(var z + eps): LayerNorm without its affine part.
template <typename T>
inline void normalize_row(const T* z, T* o, int64_t n, double eps) {
  T mean;
  const T r = inverse_std(z, n, eps, &mean);
  for (int64_t j = 0; j < n; ++j) o[j] = (z[j] - mean) * r;
}

// (g - mean g - y mean(g y)) / sqrt(var z + eps): the VJP of normalize_row at z, output y.
template <typename T>
inline void normalize_grad_row(const T* g, const T* y, const T* z, T* o, int64_t n, double eps) {
  T mean;
  const T r = inverse_std(z, n, eps, &mean);
  const T mg = row_sum(g, n) / T(n);
  const T mgy = row_dot(g, y, n) / T(n);
  for (int64_t j = 0; j < n; ++j) o[j] = (g[j] - mg - y[j] * mgy) * r;
}

// out[j] (+)= sum over rows of a[b, j] (a per-row statistic when cols_a is 1 and n > 1).
template <typename T>
inline void sum_rows(View<T> a, int64_t rows, int64_t n, bool statistic, T* out) {
  for (int64_t j = 0; j < n; ++j) out[j] = T(0);
  for (int64_t b = 0; b < rows; ++b) {
    const T* r = a.row(b);
    if (statistic) {
      for (int64_t j = 0; j < n; ++j) out[j] += r[0];
    } else {
      for (int64_t j = 0; j < n; ++j) out[j] += r[j];
    }
  }
}

// dst[b] = src[b] on rows whose mask is true (or every row without a mask), else
// the row of `other` (zeros when other.p is null).
template <typename T>
inline void select_rows(View<T> dst, View<T> src, View<T> other, const bool* mask, int64_t rows, int64_t n) {
  for (int64_t b = 0; b < rows; ++b) {
    T* d = dst.row(b);
    if (mask == nullptr || mask[b]) {
      const T* s = src.row(b);
      if (s != d) std::memcpy(d, s, sizeof(T) * n);
    } else if (other.p != nullptr) {
      const T* s = other.row(b);
      if (s != d) std::memcpy(d, s, sizeof(T) * n);
    } else {
      std::memset(d, 0, sizeof(T) * n);
    }
  }
}

// a + (mask ? 0 : carried) per row: the state gradient through a step (masked rows pass it on).
template <typename T>
inline void carry_rows(View<T> dst, View<T> a, View<T> carried, const bool* mask, int64_t rows, int64_t n) {
  for (int64_t b = 0; b < rows; ++b) {
    T* d = dst.row(b);
    const T* s = a.p == nullptr ? nullptr : a.row(b);
    const bool through = mask != nullptr && !mask[b];
    const T* c = carried.row(b);
    for (int64_t j = 0; j < n; ++j) d[j] = (s == nullptr ? T(0) : s[j]) + (through ? c[j] : T(0));
  }
}

// ---- end portable

// A contiguous (rows, n) tensor's view.
template <typename T>
inline View<T> view_of(const at::Tensor& t) {
  return View<T>{t.data_ptr<T>(), t.dim() == 2 ? t.size(1) : 0};
}

// oneDNN's inner product, the GEMM nn.LSTM itself runs on CPU: on some CPUs 1.5x to 2x
// faster than the BLAS GEMM at::mm calls at the sizes of a step. Reached through the
// dispatcher (torch's own mkldnn operators); absent from builds without oneDNN.
inline const c10::OperatorHandle* onednn_op(const char* name) {
  if (!at::hasMKLDNN()) return nullptr;
  auto handle = c10::Dispatcher::singleton().findSchema({name, ""});
  return handle.has_value() ? new c10::OperatorHandle(*handle) : nullptr;  // kept for the process
}

inline const c10::OperatorHandle* onednn_linear_op() {
  static const c10::OperatorHandle* op = onednn_op("mkldnn::_linear_pointwise");
  return op;
}

inline const c10::OperatorHandle* onednn_reorder_op() {
  static const c10::OperatorHandle* op = onednn_op("mkldnn::_reorder_linear_weight");
  return op;
}

// a @ w^T (+ bias) through oneDNN's inner product; w (N, K), packed or plain.
inline at::Tensor onednn_linear(const at::Tensor& a, const at::Tensor& w, const at::Tensor& bias) {
  torch::jit::Stack stack{
      c10::IValue(a.contiguous()), c10::IValue(w), bias.defined() ? c10::IValue(bias) : c10::IValue(),
      c10::IValue(std::string("none")), c10::IValue(c10::List<std::optional<c10::Scalar>>()), c10::IValue()};
  onednn_linear_op()->callBoxed(&stack);
  return stack[0].toTensor();
}

// operand^T @ g over every row (time and batch): a weight gradient, one GEMM after the loop.
// oneDNN reads both with the rows along the contiguous axis, so both are transposed
// (measured 2.3x faster than at::mm's BLAS here at 3200 rows, 128 by 640); g, which
// several weights share, once (weight_grad_rhs).
template <typename T>
inline bool weight_grad_on_onednn() {
  return std::is_same<T, float>::value && onednn_linear_op() != nullptr;
}

// g as weight_grad takes it: transposed for oneDNN, as it is for BLAS.
template <typename T>
inline at::Tensor weight_grad_rhs(const at::Tensor& g) {
  return weight_grad_on_onednn<T>() ? g.t().contiguous() : g;
}

template <typename T>
inline at::Tensor weight_grad(const at::Tensor& operand, const at::Tensor& rhs) {
  if (weight_grad_on_onednn<T>()) return onednn_linear(operand.t().contiguous(), rhs, at::Tensor());
  return at::mm(operand.t(), rhs);
}

// A product of a few rows (the latency shape, batch 1): oneDNN's and BLAS's call overheads
// (10 and 3 us at 1 by 64 by 320 here) dwarf the arithmetic, so it runs as a plain loop
// over the weight's rows (each read once, axpy into every output row) into a buffer of its own.
constexpr int64_t kSmallRows = 4;

template <typename T>
inline void small_gemm(const T* a, int64_t lda, const T* w, const T* bias, T* out, int64_t rows, int64_t k, int64_t n) {
  for (int64_t b = 0; b < rows; ++b) {
    T* o = out + b * n;
    if (bias != nullptr) {
      std::memcpy(o, bias, sizeof(T) * n);
    } else {
      std::fill(o, o + n, T(0));
    }
  }
  for (int64_t kk = 0; kk < k; ++kk) {
    const T* wr = w + kk * n;
    for (int64_t b = 0; b < rows; ++b) {
      const T ab = a[b * lda + kk];
      T* o = out + b * n;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) o[j] += ab * wr[j];
    }
  }
}

// A float32 GEMM for one weight read by every step: w (K, N) packed once, when the Linear is
// made, into panels of kPanelCols columns (k-major within a panel, zero-padded on the right),
// then a register-blocked AVX-512 kernel of kBlockRows rows by a panel's width, a panel (32 KB
// at K 128) staying in L1 while every row block reads it. At a step's sizes (32 by 128 by 640,
// one thread) it measured 1.5x the throughput of oneDNN's inner product on a packed weight, and
// at par with it for a whole sequence's 3200 rows (benchmarks/bench_step_gemm.py). Each sum runs
// over k in chunks (kDepth), one fused multiply-add per term; threads split the columns, never a
// sum, so the result does not depend on the thread count.
#if defined(__AVX512F__)
constexpr int64_t kPanelVectors = 4;                 // zmm registers across a panel
constexpr int64_t kPanelCols = 16 * kPanelVectors;   // columns of one panel
constexpr int64_t kBlockRows = 6;                     // rows of a register block (24 accumulators)

// out[r, panel cols] = bias + a[r, :] @ panel for `R` rows (R <= kBlockRows). The sum over k runs
// in chunks of kDepth terms, each in registers from zero, then added to the row in memory: a
// rounding error that grows with kDepth, not K, as in BLAS's own blocking over K.
constexpr int64_t kDepth = 128;

template <int R>
inline void panel_block(const float* a, int64_t lda, const float* panel, int64_t k, const float* bias,
                        float* out, int64_t ldo, __mmask16 mask[kPanelVectors]) {
  for (int64_t k0 = 0; k0 < k; k0 += kDepth) {
    __m512 acc[R][kPanelVectors];
    for (int64_t v = 0; v < kPanelVectors; ++v) {
      const __m512 b0 =
          k0 > 0 || bias == nullptr ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask[v], bias + 16 * v);
      for (int r = 0; r < R; ++r) acc[r][v] = b0;
    }
    const int64_t k1 = std::min(k, k0 + kDepth);
    for (int64_t kk = k0; kk < k1; ++kk) {
      __m512 w[kPanelVectors];
      for (int64_t v = 0; v < kPanelVectors; ++v) w[v] = _mm512_loadu_ps(panel + kk * kPanelCols + 16 * v);
      for (int r = 0; r < R; ++r) {
        const __m512 x = _mm512_set1_ps(a[r * lda + kk]);
        for (int64_t v = 0; v < kPanelVectors; ++v) acc[r][v] = _mm512_fmadd_ps(x, w[v], acc[r][v]);
      }
    }
    for (int r = 0; r < R; ++r) {
      for (int64_t v = 0; v < kPanelVectors; ++v) {
        float* o = out + r * ldo + 16 * v;
        const __m512 sum = k0 > 0 ? _mm512_add_ps(_mm512_maskz_loadu_ps(mask[v], o), acc[r][v]) : acc[r][v];
        _mm512_mask_storeu_ps(o, mask[v], sum);
      }
    }
  }
}

template <int R>
inline void panel_rows(const float* a, int64_t lda, const float* panel, int64_t k, const float* bias,
                       float* out, int64_t ldo, __mmask16 mask[kPanelVectors], int64_t rows) {
  if constexpr (R > 1) {
    if (rows < R) return panel_rows<R - 1>(a, lda, panel, k, bias, out, ldo, mask, rows);
  }
  panel_block<R>(a, lda, panel, k, bias, out, ldo, mask);
}

struct PackedGemm {
  at::Tensor panels;  // (N / kPanelCols rounded up, K, kPanelCols)
  int64_t k = 0, n = 0;
  explicit PackedGemm(const at::Tensor& w) : k(w.size(0)), n(w.size(1)) {
    const int64_t count = (n + kPanelCols - 1) / kPanelCols;
    panels = at::zeros({count, k, kPanelCols}, w.options().dtype(at::kFloat));
    const at::Tensor wc = w.contiguous();
    const float* src = wc.data_ptr<float>();
    float* dst = panels.data_ptr<float>();
    for (int64_t p = 0; p < count; ++p) {
      const int64_t cols = std::min(kPanelCols, n - p * kPanelCols);
      for (int64_t kk = 0; kk < k; ++kk) {
        std::memcpy(dst + (p * k + kk) * kPanelCols, src + kk * n + p * kPanelCols, sizeof(float) * cols);
      }
    }
  }
  // out (rows, N) = a (rows, K; unit column stride) @ w (+ bias, N contiguous or null).
  void operator()(const float* a, int64_t lda, int64_t rows, const float* bias, float* out) const {
    const int64_t count = panels.size(0);
    const float* base = panels.data_ptr<float>();
    auto run = [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        __mmask16 mask[kPanelVectors];
        for (int64_t v = 0; v < kPanelVectors; ++v) {
          const int64_t left = std::max<int64_t>(0, std::min<int64_t>(16, n - p * kPanelCols - 16 * v));
          mask[v] = static_cast<__mmask16>((1u << left) - 1u);
        }
        const float* panel = base + p * k * kPanelCols;
        const float* pb = bias == nullptr ? nullptr : bias + p * kPanelCols;
        for (int64_t r = 0; r < rows; r += kBlockRows) {
          panel_rows<kBlockRows>(a + r * lda, lda, panel, k, pb, out + r * n + p * kPanelCols, n, mask,
                                 std::min(kBlockRows, rows - r));
        }
      }
    };
    // One task per thread when the product is big enough to pay a fork (about 1 us).
    if (rows * k * n >= (int64_t(1) << 20) && at::get_num_threads() > 1) {
      at::parallel_for(0, count, 1, run);
    } else {
      run(0, count);
    }
  }
};
#endif

// a @ w (+ bias) for a weight read by many GEMMs of `rows` rows: a plain loop for a few rows
// (small_gemm); else, in float32, packed once into column panels for the AVX-512 kernel
// (PackedGemm) where the build has AVX-512, or into oneDNN's layout where oneDNN is present;
// else through at::mm / at::addmm. The small and packed paths write one buffer, rewritten by
// every call.
template <typename T>
struct Linear {
  at::Tensor w;       // (K, N)
  at::Tensor packed;  // oneDNN's layout of w^T (N, K); undefined on the other paths
  at::Tensor out;     // the small and packed paths' result
#if defined(__AVX512F__)
  std::shared_ptr<const PackedGemm> gemm;  // the packed path's panels; null on the others
#endif
  Linear(const at::Tensor& w_, int64_t rows) : w(w_) {
    if (rows <= kSmallRows) {
      w = w_.contiguous();
      out = at::empty({rows, w.size(1)}, w.options());
      return;
    }
    if (!std::is_same<T, float>::value) return;
#if defined(__AVX512F__)
    gemm = std::make_shared<const PackedGemm>(w_);
    out = at::empty({rows, w.size(1)}, w.options());
#else
    if (onednn_linear_op() != nullptr && onednn_reorder_op() != nullptr) {
      torch::jit::Stack stack{c10::IValue(w.t().contiguous()), c10::IValue(rows)};
      onednn_reorder_op()->callBoxed(&stack);
      packed = stack[0].toTensor();
    }
#endif
  }
  at::Tensor operator()(const at::Tensor& a, const at::Tensor& bias = at::Tensor()) const {
    if (out.defined() && a.size(0) == out.size(0) && a.size(1) == w.size(0) && a.stride(1) == 1) {
      const at::Tensor b = bias.defined() ? bias.contiguous() : at::Tensor();
      const T* bp = b.defined() ? b.data_ptr<T>() : nullptr;
#if defined(__AVX512F__)
      if constexpr (std::is_same<T, float>::value) {
        if (gemm) {
          (*gemm)(a.data_ptr<float>(), a.stride(0), a.size(0), bp, out.data_ptr<float>());
          return out;
        }
      }
#endif
      small_gemm<T>(a.data_ptr<T>(), a.stride(0), w.data_ptr<T>(), bp, out.data_ptr<T>(), a.size(0), w.size(0),
                    w.size(1));
      return out;
    }
    if (packed.defined()) return onednn_linear(a, packed, bias);
    return bias.defined() ? at::addmm(bias, a, w) : at::mm(a, w);
  }
};

// Work per parallel task: the loops over rows split only when a task has this many elements.
constexpr int64_t kGrainElements = 32768;

inline int64_t grain_rows(int64_t cols) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, cols)); }

}  // namespace novolstm_rt
