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
#include <ATen/core/LegacyTypeDispatch.h>
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
#include <c10/util/ParallelGuard.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <tuple>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
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

// exp(x). In float, a branch-free range reduction x = n ln2 + r, |r| <= ln2 / 2, and the Taylor
// polynomial of degree 7 (truncation below 1e-8 relative), so that the compiler vectorizes the
// loops that call it; scalar libm expf kept the whole step at libm's pace. 2^n is applied in two
// normal factors, so that results below the smallest normal float round once into the
// subnormals, as a float64 exp rounded to float32 does; below -104 the result rounds to 0, and
// the argument is clamped at 89 above, where the factors 2^64 * 2^64 overflow the product to inf
// as float64 exp rounded to float32 does (from 88.73 up). Within about 2 ulp of float64 exp
// (tests/test_torch_compiled.py sweeps the whole range). In double, std::exp.
inline float exp(float x) {
  const float c = x < -104.0f ? -104.0f : (x > 89.0f ? 89.0f : x);
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
  const int32_t ni = static_cast<int32_t>(n);  // in [-150, 128]
  const int32_t half = ni >> 1;                // floor(n / 2), in [-75, 64]
  const int32_t bits_a = (half + 127) << 23, bits_b = (ni - half + 127) << 23;
  float scale_a, scale_b;
  std::memcpy(&scale_a, &bits_a, sizeof scale_a);
  std::memcpy(&scale_b, &bits_b, sizeof scale_b);
  const float y = (p * scale_a) * scale_b;
  return x == x ? y : x;  // NaN stays NaN
}

inline double exp(double x) { return std::exp(x); }

// exp(x) for x <= 0: every exp the activations and softmax take (of -|x|, -2|x| and x - max x).
template <typename T>
inline T exp_nonpositive(T x) {
  return exp(x);
}

// log(1 + e) for e in [0, 1] (softplus' tail), vectorizable: u = 1 + e rounded, with the part of e
// that rounding drops added back as (e - (u - 1)) / u; u = 2^k (1 + f), f in [sqrt(1/2) - 1,
// sqrt(2) - 1] exact, and log(1 + f) = f - f^2 / 2 + s (f^2 / 2 + R), s = f / (2 + f), R the series
// of 2 atanh(s) / s - 2 to s^10 (|s| <= 0.172, truncation below 3e-9 relative), where s's own
// rounding reaches only the terms of order f^3 (fdlibm's form). Within 1.5 ulp of float64 log1p
// (a sweep of every float in [0, 1]). In double, std::log1p.
inline float log1p_unit(float e) {
  const float u = 1.0f + e;
  const float dropped = (e - (u - 1.0f)) / u;
  const bool high = u > 1.41421356f;
  const float f = (high ? 0.5f * u : u) - 1.0f;  // exact
  const float s = f / (2.0f + f), s2 = s * s, half_f2 = 0.5f * f * f;
  float q = 2.0f / 11.0f;
  q = q * s2 + 2.0f / 9.0f;
  q = q * s2 + 2.0f / 7.0f;
  q = q * s2 + 2.0f / 5.0f;
  q = q * s2 + 2.0f / 3.0f;
  const float log_m = f - (half_f2 - s * (half_f2 + s2 * q));
  const float k = high ? 1.0f : 0.0f;
  return k * 0.693359375f + (log_m + (dropped + k * -2.12194440e-4f));  // ln2 in two parts
}

inline double log1p_unit(double e) { return std::log1p(e); }

// The exact logistic, overflow-free for every finite input: exp only of -|x|.
template <typename T>
inline T sigmoid(T x) {
  const T e = exp_nonpositive(-std::fabs(x));
  const T s = T(1) / (T(1) + e);
  return x >= T(0) ? s : e * s;
}

// tanh from exp(-2|x|); below 0.4 its odd Taylor polynomial to degree 13 (truncation below 4e-9
// relative), where (1 - e) / (1 + e) would lose up to 3 bits to the cancellation in 1 - e.
template <typename T>
inline T tanh(T x) {
  const T a = std::fabs(x);
  const T e = exp_nonpositive(T(-2) * a);
  const T far = (T(1) - e) / (T(1) + e);
  const T a2 = a * a;
  T q = T(21844.0 / 6081075.0);
  q = q * a2 + T(-1382.0 / 155925.0);
  q = q * a2 + T(62.0 / 2835.0);
  q = q * a2 + T(-17.0 / 315.0);
  q = q * a2 + T(2.0 / 15.0);
  q = q * a2 + T(-1.0 / 3.0);
  const T near = a + a * (a2 * q);
  const T y = a < T(0.4) ? near : far;
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
  return (z > T(0) ? z : T(0)) + log1p_unit(exp_nonpositive(-std::fabs(z)));
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

// exp(a - max a) into o, and the reciprocal of its sum: softmax_row but for its last pass (which a
// fused loop over the row's elements makes: o[j] * the reciprocal).
template <typename T>
inline T softmax_exp_row(const T* a, T* o, int64_t n) {
  const T m = row_max(a, n);
  for (int64_t j = 0; j < n; ++j) o[j] = exp_nonpositive(a[j] - m);
  return T(1) / row_sum(o, n);
}

// softmax over the row, the row maximum subtracted first: no overflow for finite input.
template <typename T>
inline void softmax_row(const T* a, T* o, int64_t n) {
  const T inv = softmax_exp_row(a, o, n);
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

// dst[b] = src[b] if row b's mask is true (or there is no mask), else the row of `other` (zeros
// when other.p is null). One row: the generated loops over rows call it for their own rows.
template <typename T>
inline void select_row(View<T> dst, View<T> src, View<T> other, const bool* mask, int64_t b, int64_t n) {
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

// select_row for every row.
template <typename T>
inline void select_rows(View<T> dst, View<T> src, View<T> other, const bool* mask, int64_t rows, int64_t n) {
  for (int64_t b = 0; b < rows; ++b) select_row(dst, src, other, mask, b, n);
}

// src itself where every row is live (no mask), else src's rows copied into buf, masked rows zero.
template <typename T>
inline View<T> masked_rows(View<T> buf, View<T> src, const bool* mask, int64_t rows, int64_t n) {
  if (mask == nullptr) return src;
  select_rows(buf, src, View<T>{nullptr, 0}, mask, rows, n);
  return buf;
}

// Whether strided_rows reads the block in place (else it copies it into its buffer).
inline bool strided_in_place(int64_t inc, const bool* mask) { return inc == 1 && mask == nullptr; }

// Row b of the (rows, n) block at p (rows ld apart, elements inc apart) into buf's row b, zeros
// if the row is masked.
template <typename T>
inline void strided_row(View<T> buf, const T* p, int64_t ld, int64_t inc, const bool* mask, int64_t b, int64_t n) {
  T* d = buf.row(b);
  const T* s = p + b * ld;
  if (mask != nullptr && !mask[b]) {
    std::memset(d, 0, sizeof(T) * n);
  } else if (inc == 1) {
    std::memcpy(d, s, sizeof(T) * n);
  } else {
    for (int64_t j = 0; j < n; ++j) d[j] = s[j * inc];
  }
}

// The (rows, n) block at p, rows ld apart and elements inc apart: itself where that is a View (inc 1)
// and every row is live (no mask), else copied into buf, masked rows zero. An output gradient
// broadcast from a scalar (the gradient of a sum) is read in place, never made whole.
template <typename T>
inline View<T> strided_rows(View<T> buf, const T* p, int64_t ld, int64_t inc, const bool* mask, int64_t rows,
                            int64_t n) {
  if (strided_in_place(inc, mask)) return View<T>{const_cast<T*>(p), ld};
  for (int64_t b = 0; b < rows; ++b) strided_row(buf, p, ld, inc, mask, b, n);
  return buf;
}

// Row b of a + (mask ? 0 : carried): the state gradient through a step (masked rows pass it on).
template <typename T>
inline void carry_row(View<T> dst, View<T> a, View<T> carried, const bool* mask, int64_t b, int64_t n) {
  if (mask == nullptr && a.p == dst.p) return;  // the step wrote it in place
  T* d = dst.row(b);
  const T* s = a.p == nullptr ? nullptr : a.row(b);
  const bool through = mask != nullptr && !mask[b];
  const T* c = carried.row(b);
  for (int64_t j = 0; j < n; ++j) d[j] = (s == nullptr ? T(0) : s[j]) + (through ? c[j] : T(0));
}

// ---- end portable

// acc[j] += the sum over rows of a's column j (of its one column where `statistic`) at each of
// `steps` steps, whose blocks of `rows` rows a holds, in the order the backward loop runs them
// (t = steps - 1 - s, or s where `reverse`): each step's sum as sum_rows makes it, added in turn,
// as an accumulation at each step would. Threads split the columns, never a sum, from 2^20 terms
// (below, at the typical shape's 3200 rows of 128 units, a pass over memory of tens of us that a
// fork, on a loaded machine, would cost more than it saves).
template <typename T>
inline void sum_step_rows(View<T> a, int64_t steps, int64_t rows, int64_t n, bool statistic, bool reverse, T* acc) {
  const int64_t grain = steps * rows * n >= (int64_t(1) << 20) ? 16 : n;
  at::parallel_for(0, n, grain, [&](int64_t j0, int64_t j1) {
    std::vector<T> sum(j1 - j0);
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t t = reverse ? s : steps - 1 - s;
      sum_rows(View<T>{a.p + t * rows * a.ld + (statistic ? 0 : j0), a.ld}, rows, j1 - j0, statistic, sum.data());
      for (int64_t j = j0; j < j1; ++j) acc[j] += sum[j - j0];
    }
  });
}

// A buffer kept across calls in `slot` (one per allocation site, per thread): large buffers freed
// at the end of a call went back to the OS and faulted in again, page by page, on the next call.
// The slot's tensor is reused only when nothing else holds it or its memory (no returned tensor,
// saved tape or view of one is alive), so a result a caller keeps is never overwritten. Buffers
// above kKeepBytes are not kept (a long sequence's tape would stay resident between calls).
constexpr int64_t kKeepBytes = int64_t(64) << 20;

inline at::Tensor reuse_or_empty(at::Tensor& slot, at::IntArrayRef shape, const at::TensorOptions& opts) {
  if (c10::multiply_integers(shape) * static_cast<int64_t>(opts.dtype().itemsize()) > kKeepBytes) {
    slot = at::Tensor();
    return at::empty(shape, opts);
  }
  if (slot.defined() && slot.use_count() == 1 && slot.storage().use_count() == 1 && slot.sizes() == shape &&
      slot.dtype() == opts.dtype()) {
    return slot;
  }
  slot = at::empty(shape, opts);
  return slot;
}

// at::cat of `parts` along `dim`, into `slot`'s buffer (see reuse_or_empty).
inline at::Tensor cat_reused(at::Tensor& slot, at::TensorList parts, int64_t dim, const at::TensorOptions& opts) {
  std::vector<int64_t> shape = parts[0].sizes().vec();
  shape[dim] = 0;
  for (const at::Tensor& part : parts) shape[dim] += part.size(dim);
  at::Tensor out = reuse_or_empty(slot, shape, opts);
  // Below autograd: a double backward calls the kernel with grad mode on and parameters that
  // require grad, where an out= function refuses to run (the result is the kernel's own buffer).
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  at::cat_out(out, parts, dim);
  return out;
}

// A new handle (tensor) on t's memory, for a workspace buffer a call returns: the slot's own
// tensor never leaves the kernel, so that none of its callers' autograd state stays on it.
inline at::Tensor handed_out(const at::Tensor& t) { return t.view(t.sizes()); }

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

// The threads that run a sequence's steps (a crew, in one parallel region around the loop over
// time), or the calling thread alone (solo). A crew's threads split each GEMM and loop over rows
// among themselves, where solo each of them forks on its own (at::parallel_for): one fork a
// sequence, not one per GEMM and loop, where a step at the typical shape is a few tens of us and
// a fork or a barrier about one. The split is by rows and columns, never a sum, as
// at::parallel_for's, so that results do not depend on the thread count.
//
// A local crew splits every GEMM and loop of a step by the same rows (begin(rows) to end(rows)):
// a row's values then never leave its thread, and neither a step's parts nor two steps need a
// barrier between them (sync() does nothing). Else its threads split a GEMM's panels too, and
// sync() is a barrier. A crew is local where the step's work is row-wise alone (no sum over the
// batch, no value one thread computes for all; the emitter's decision) and each thread gets at
// least kLocalRows rows (a narrower share reads the whole weight from L2 for few rows).
constexpr int64_t kLocalRows = 8;

// Thrown by Team::barrier in the threads of a crew one of whose threads has thrown (see in_team).
struct TeamAbandoned {};

struct Team {
  int64_t id = 0, size = 1;
  bool crew = false;
  bool local = false;  // every part split by the same rows: no barrier needed between them
  // The barrier (counted from 1) that a thread which threw took the place of, if one did (see in_team).
  const std::atomic<int64_t>* abandoned_at = nullptr;
  mutable int64_t passed = 0;  // the barriers this thread has passed

  void barrier() const {
#ifdef _OPENMP
    if (crew && size > 1) {
#pragma omp barrier
      ++passed;
      if (abandoned_at != nullptr && abandoned_at->load() <= passed) throw TeamAbandoned{};
    }
#endif
  }
  // Between two parts of the work (and two steps): a barrier, but in a local crew.
  void sync() const {
    if (!local) barrier();
  }
  // [begin, end) of `items` that this thread takes in a crew.
  int64_t begin(int64_t items) const { return items * id / size; }
  int64_t end(int64_t items) const { return items * (id + 1) / size; }
  // row(b) for every row b < n: this thread's share in a crew; else split by at::parallel_for.
  template <typename F>
  void rows(int64_t n, int64_t grain, const F& row) const {
    if (crew) {
      for (int64_t b = begin(n); b < end(n); ++b) row(b);
    } else {
      at::parallel_for(0, n, grain, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) row(b);
      });
    }
  }
  // f(begin, end) on this thread's share of [0, n) in a crew; else f(0, n).
  template <typename F>
  void split(int64_t n, const F& f) const {
    if (!crew) return f(0, n);
    if (begin(n) < end(n)) f(begin(n), end(n));
  }
  // f() on one thread.
  template <typename F>
  void serial(const F& f) const {
    if (id == 0) f();
  }
};

// body(team) on a crew of torch's threads where `crew` (see crew_worth), else solo. local_rows: the
// rows every part of the body splits where it is row-wise alone (see Team), else 0.
//
// An exception in a crew's thread is rethrown here, after the region (it cannot leave a parallel
// region: OpenMP would end the process). The other threads must not wait for the thread that threw
// at a barrier it will never reach: it arrives at that barrier (the next after the ones it passed)
// in its stead, and a thread that passes it throws TeamAbandoned, which ends its body too. (Which
// barrier, not only whether: a thread slow to leave the barrier before may see the flag before it
// reaches that one.) So that the barrier the thread that threw stands in for is one each of the
// others reaches, whatever part it threw in, a crew that is not local ends with a barrier of its
// own after the body; a local crew has no barriers at all.
template <typename F>
inline void in_team(bool crew, int64_t local_rows, const F& body) {
#ifdef _OPENMP
  if (crew && at::get_num_threads() > 1 && !at::in_parallel_region()) {
    std::exception_ptr error;
    std::atomic<int64_t> abandoned_at{INT64_MAX};
#pragma omp parallel
    {
      const int id = omp_get_thread_num(), size = omp_get_num_threads();
      const at::internal::ThreadIdGuard tid_guard(id);
      const c10::ParallelGuard guard(true);
      const Team team{id, size, true, size > 1 && local_rows / size >= kLocalRows, &abandoned_at};
      try {
        body(team);
        if (!team.local) team.barrier();
      } catch (const TeamAbandoned&) {  // another thread threw: nothing of this one's to report
      } catch (...) {
#pragma omp critical(novolstm_team_error)
        {
          if (!error) error = std::current_exception();
        }
        abandoned_at.store(team.passed + 1);  // every thread that throws is between the same two barriers
        if (!team.local && size > 1) {
#pragma omp barrier
        }
      }
    }
    if (error) std::rethrow_exception(error);
    return;
  }
#endif
  (void)local_rows;
  body(Team{});
}

// A product of a few rows (the latency shape, batch 1): oneDNN's and BLAS's call overheads
// (10 and 3 us at 1 by 64 by 320 here) dwarf the arithmetic, so it runs as a plain loop
// over the weight's rows (each read once, axpy into every output row).
constexpr int64_t kSmallRows = 4;

// out rows (ldo apart) = init rows (ldi apart; ldi 0: one row for every row, a bias; null: zeros)
// + a (rows, k; lda apart) @ w (k, n contiguous).
template <typename T>
inline void small_gemm(const T* a, int64_t lda, const T* w, const T* init, int64_t ldi, T* out, int64_t ldo,
                       int64_t rows, int64_t k, int64_t n) {
  for (int64_t b = 0; b < rows; ++b) {
    T* o = out + b * ldo;
    if (init != nullptr) {
      std::memcpy(o, init + b * ldi, sizeof(T) * n);
    } else {
      std::fill(o, o + n, T(0));
    }
  }
  for (int64_t kk = 0; kk < k; ++kk) {
    const T* wr = w + kk * n;
    for (int64_t b = 0; b < rows; ++b) {
      const T ab = a[b * lda + kk];
      T* o = out + b * ldo;
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
constexpr int64_t kChunkRows = 16 * kBlockRows;       // rows of a chunk (see PackedGemm)

// The sum over k runs in chunks of kDepth terms, each in registers from zero (the first from the
// init row), then added to the row in memory: a rounding error that grows with kDepth, not K, as
// in BLAS's own blocking over K.
constexpr int64_t kDepth = 128;

// The lanes of each of a panel's vectors that hold columns below n (the last panel's are partial).
inline void panel_mask(int64_t n, int64_t panel, __mmask16 mask[kPanelVectors]) {
  for (int64_t v = 0; v < kPanelVectors; ++v) {
    const int64_t left = std::max<int64_t>(0, std::min<int64_t>(16, n - panel * kPanelCols - 16 * v));
    mask[v] = static_cast<__mmask16>((1u << left) - 1u);
  }
}

// The terms k0 to k1 (one chunk of kDepth) of out[r, panel cols] = init[r] + a[r, :] @ panel for `R`
// rows (R <= kBlockRows): the first chunk (k0 0) starts from the init row (or zero) and stores the
// sum; a later one sums from zero in registers and adds that to the row in memory. (Running one
// slice of kDepth over every row block before the next, so that it stays in L1 at a deep K,
// measured no faster at 128 x 512 by 512 x 2560 on one thread.)
template <int R>
inline void panel_block(const float* a, int64_t lda, const float* panel, int64_t k0, int64_t k1, const float* init,
                        int64_t ldi, float* out, int64_t ldo, const __mmask16 mask[kPanelVectors]) {
  __m512 acc[R][kPanelVectors];
  for (int r = 0; r < R; ++r) {
    for (int64_t v = 0; v < kPanelVectors; ++v) {
      acc[r][v] = k0 > 0 || init == nullptr ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(mask[v], init + r * ldi + 16 * v);
    }
  }
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

template <int R>
inline void panel_rows(const float* a, int64_t lda, const float* panel, int64_t k0, int64_t k1, const float* init,
                       int64_t ldi, float* out, int64_t ldo, const __mmask16 mask[kPanelVectors], int64_t rows) {
  if constexpr (R > 1) {
    if (rows < R) return panel_rows<R - 1>(a, lda, panel, k0, k1, init, ldi, out, ldo, mask, rows);
  }
  panel_block<R>(a, lda, panel, k0, k1, init, ldi, out, ldo, mask);
}

// One task per thread when a product is big enough to pay a fork (about 1 us).
inline bool worth_threads(int64_t flops) { return flops >= (int64_t(1) << 20) && at::get_num_threads() > 1; }

// `rows` split into chunks of at most kChunkRows, of about equal size (a multiple of kBlockRows but
// the last), so that threads given whole chunks get equal work.
inline int64_t chunk_rows(int64_t rows) {
  const int64_t chunks = std::max<int64_t>(1, (rows + kChunkRows - 1) / kChunkRows);
  const int64_t even = (rows + chunks - 1) / chunks;
  return (even + kBlockRows - 1) / kBlockRows * kBlockRows;
}

struct PackedGemm {
  at::Tensor panels;  // (N / kPanelCols rounded up, K, kPanelCols)
  int64_t k = 0, n = 0;
  // w read through its strides (a transposed weight needs no contiguous copy first); the panels
  // in `slot`'s buffer where one is given (see reuse_or_empty).
  PackedGemm(const at::Tensor& w, at::Tensor* slot) : k(w.size(0)), n(w.size(1)) {
    const int64_t count = (n + kPanelCols - 1) / kPanelCols;
    const std::vector<int64_t> shape{count, k, kPanelCols};
    const auto opts = w.options().dtype(at::kFloat);
    panels = slot != nullptr ? reuse_or_empty(*slot, shape, opts) : at::empty(shape, opts);
    const float* src = w.data_ptr<float>();
    const int64_t s0 = w.stride(0), s1 = w.stride(1);
    float* dst = panels.data_ptr<float>();
    // threads split the panels where the weight is big enough to pay a fork (a few hundred KB)
    at::parallel_for(0, count, std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, k * kPanelCols)),
                     [&](int64_t p0, int64_t p1) {
                       for (int64_t p = p0; p < p1; ++p) {
                         const int64_t cols = std::min(kPanelCols, n - p * kPanelCols);
                         if (s0 == 1 && s1 != 1) {  // a transposed weight: read along its contiguous axis
                           float* d = dst + p * k * kPanelCols;
                           for (int64_t c = 0; c < cols; ++c) {
                             const float* col = src + (p * kPanelCols + c) * s1;
                             for (int64_t kk = 0; kk < k; ++kk) d[kk * kPanelCols + c] = col[kk];
                           }
                           for (int64_t kk = 0; kk < k; ++kk) std::fill(d + kk * kPanelCols + cols, d + (kk + 1) * kPanelCols, 0.0f);
                           continue;
                         }
                         for (int64_t kk = 0; kk < k; ++kk) {
                           float* d = dst + (p * k + kk) * kPanelCols;
                           const float* row = src + kk * s0 + p * kPanelCols * s1;
                           if (s1 == 1) {
                             std::memcpy(d, row, sizeof(float) * cols);
                           } else {
                             for (int64_t c = 0; c < cols; ++c) d[c] = row[c * s1];
                           }
                           std::fill(d + cols, d + kPanelCols, 0.0f);
                         }
                       }
                     });
  }
  // out (rows, N; ldo apart) = init (as small_gemm's) + a (rows, K; lda apart) @ w.
  //
  // The work is one item per chunk of rows (a step's batch is one chunk; chunks of equal size)
  // and panel, chunk after chunk; threads take runs of items in one fork (or their share of them
  // in a crew, see Team). Each panel stays in L1 (at K 128) while the chunk's row blocks read it,
  // and the chunk's operand rows and output stay in L2 while every panel passes (a whole
  // sequence's rows at once would stream them from memory once per panel). Each output element's
  // arithmetic is the same whatever the split: threads split rows and columns, never a sum.
  void operator()(const float* a, int64_t lda, int64_t rows, const float* init, int64_t ldi, float* out,
                  int64_t ldo, const Team& team = Team{}) const {
    const int64_t count = panels.size(0);
    const float* base = panels.data_ptr<float>();
    const int64_t crows = std::max<int64_t>(1, chunk_rows(rows));
    const int64_t items = (rows + crows - 1) / crows * count;
    auto run = [&](int64_t i0, int64_t i1) {
      for (int64_t item = i0; item < i1; ++item) {
        const int64_t r0 = item / count * crows, r1 = std::min(rows, r0 + crows), p = item % count;
        __mmask16 mask[kPanelVectors];
        panel_mask(n, p, mask);
        const float* panel = base + p * k * kPanelCols;
        const float* pi = init == nullptr ? nullptr : init + p * kPanelCols;
        for (int64_t r = r0; r < r1; r += kBlockRows) {
          if (pi != nullptr && ldi != 0) {  // the next block's init rows, while this block computes
            for (int64_t i = r + kBlockRows; i < std::min(r1, r + 2 * kBlockRows); ++i) {
              for (int64_t v = 0; v < kPanelVectors; ++v) {
                _mm_prefetch(reinterpret_cast<const char*>(pi + i * ldi + 16 * v), _MM_HINT_T0);
              }
            }
          }
          for (int64_t k0 = 0; k0 < k; k0 += kDepth) {
            panel_rows<kBlockRows>(a + r * lda, lda, panel, k0, std::min(k, k0 + kDepth),
                                   pi == nullptr ? nullptr : pi + r * ldi, ldi, out + r * ldo + p * kPanelCols, ldo,
                                   mask, std::min(kBlockRows, r1 - r));
          }
        }
      }
    };
    if (team.crew && team.local) {  // this thread's rows, every panel (see Team)
      const int64_t r0 = team.begin(rows), r1 = team.end(rows);
      if (r1 > r0) {
        (*this)(a + r0 * lda, lda, r1 - r0, init == nullptr ? nullptr : init + r0 * ldi, ldi, out + r0 * ldo, ldo,
                Team{0, 1, true});
      }
    } else if (team.crew) {
      run(team.begin(items), team.end(items));
    } else if (worth_threads(rows * k * n)) {
      at::parallel_for(0, items, 1, run);
    } else {
      run(0, items);
    }
  }
};

// out[c, panel cols] += sum over `rows` rows i of a[i, c] g[i, panel cols], for R columns c of a;
// a packed (ap[i * kBlockRows + c], see weight_grad_gemm).
template <int R>
inline void grad_block(const float* ap, const float* g, int64_t ldg, int64_t rows, float* out, int64_t ldo,
                       const __mmask16 mask[kPanelVectors]) {
  __m512 acc[R][kPanelVectors];
  for (int r = 0; r < R; ++r) {
    for (int64_t v = 0; v < kPanelVectors; ++v) acc[r][v] = _mm512_setzero_ps();
  }
  for (int64_t i = 0; i < rows; ++i) {
    __m512 w[kPanelVectors];
    for (int64_t v = 0; v < kPanelVectors; ++v) w[v] = _mm512_maskz_loadu_ps(mask[v], g + i * ldg + 16 * v);
    for (int r = 0; r < R; ++r) {
      const __m512 x = _mm512_set1_ps(ap[i * kBlockRows + r]);
      for (int64_t v = 0; v < kPanelVectors; ++v) acc[r][v] = _mm512_fmadd_ps(x, w[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int64_t v = 0; v < kPanelVectors; ++v) {
      float* o = out + r * ldo + 16 * v;
      _mm512_mask_storeu_ps(o, mask[v], _mm512_add_ps(_mm512_maskz_loadu_ps(mask[v], o), acc[r][v]));
    }
  }
}

template <int R>
inline void grad_rows(const float* ap, const float* g, int64_t ldg, int64_t rows, float* out, int64_t ldo,
                      const __mmask16 mask[kPanelVectors], int64_t cols) {
  if constexpr (R > 1) {
    if (cols < R) return grad_rows<R - 1>(ap, g, ldg, rows, out, ldo, mask, cols);
  }
  grad_block<R>(ap, g, ldg, rows, out, ldo, mask);
}

// The rows a span of weight_grad_gemm packs at once: about 512 KB of a's packed blocks, so that they
// stay in L2 while every panel of g reads them.
constexpr int64_t kSpanFloats = int64_t(1) << 17;

// out (K, N, zeroed) += a^T @ g over `rows` rows (a (rows, K), g (rows, N); lda, ldg apart): a
// weight gradient over every timestep, read in place (no transposed copies). The rows run in
// chunks of kDepth; each chunk of a is packed in blocks of kBlockRows columns, row after row (3 KB
// a block, so that a block and a panel of g's chunk (32 KB) stay in L1). For each panel of g's
// columns, chunk after chunk, and each block, the chunk's sum in registers is added to out. bias_out
// (N, zeroed, or null) gets g's column sums in the same pass. A span of chunks (kSpanFloats) is
// packed at once, threads splitting the blocks, then threads split the panels over the span: two
// forks a span, where one a chunk left the other threads idle while one packed. Each output
// element's sums run chunk after chunk whatever the split: threads never split a sum.
inline void weight_grad_gemm(const float* a, int64_t lda, const float* g, int64_t ldg, int64_t rows, int64_t k,
                             int64_t n, float* out, float* bias_out) {
  const int64_t count = (n + kPanelCols - 1) / kPanelCols;
  const int64_t blocks = (k + kBlockRows - 1) / kBlockRows;
  const int64_t chunk_floats = std::max<int64_t>(1, blocks) * kDepth * kBlockRows;
  const int64_t span_chunks = std::max<int64_t>(1, kSpanFloats / chunk_floats);
  std::vector<float> packed(span_chunks * chunk_floats);
  for (int64_t s0 = 0; s0 < rows; s0 += span_chunks * kDepth) {
    const int64_t s1 = std::min(rows, s0 + span_chunks * kDepth);
    const int64_t chunks = (s1 - s0 + kDepth - 1) / kDepth;
    const bool threads = worth_threads((s1 - s0) * k * n);
    auto pack = [&](int64_t j0, int64_t j1) {  // item j: block j % blocks of chunk j / blocks
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t i0 = s0 + j / blocks * kDepth, cb = j % blocks;
        const int64_t depth = std::min(kDepth, s1 - i0);
        float* dst = packed.data() + j * kDepth * kBlockRows;
        for (int64_t i = 0; i < depth; ++i) {
          for (int64_t r = 0; r < kBlockRows; ++r) {
            const int64_t c = cb * kBlockRows + r;
            dst[i * kBlockRows + r] = c < k ? a[(i0 + i) * lda + c] : 0.0f;
          }
        }
      }
    };
    auto run = [&](int64_t p0, int64_t p1) {
      // The chunk's rows of one panel of g, contiguous: in place, rows ldg apart fall into a few
      // of L1's sets and evict each other before the next block of a's columns reads them again.
      alignas(64) float gp[kDepth * kPanelCols];
      for (int64_t p = p0; p < p1; ++p) {
        __mmask16 mask[kPanelVectors];
        panel_mask(n, p, mask);
        for (int64_t c = 0; c < chunks; ++c) {
          const int64_t i0 = s0 + c * kDepth, depth = std::min(kDepth, s1 - i0);
          const float* src = g + i0 * ldg + p * kPanelCols;
          for (int64_t i = 0; i < depth; ++i) {
            for (int64_t v = 0; v < kPanelVectors; ++v) {
              _mm512_store_ps(gp + i * kPanelCols + 16 * v, _mm512_maskz_loadu_ps(mask[v], src + i * ldg + 16 * v));
            }
          }
          for (int64_t cb = 0; cb < blocks; ++cb) {
            grad_rows<kBlockRows>(packed.data() + (c * blocks + cb) * kDepth * kBlockRows, gp, kPanelCols, depth,
                                  out + cb * kBlockRows * n + p * kPanelCols, n, mask,
                                  std::min(kBlockRows, k - cb * kBlockRows));
          }
          if (bias_out != nullptr) {
            __m512 acc[kPanelVectors];
            for (int64_t v = 0; v < kPanelVectors; ++v) acc[v] = _mm512_setzero_ps();
            for (int64_t i = 0; i < depth; ++i) {
              for (int64_t v = 0; v < kPanelVectors; ++v) {
                acc[v] = _mm512_add_ps(acc[v], _mm512_load_ps(gp + i * kPanelCols + 16 * v));
              }
            }
            for (int64_t v = 0; v < kPanelVectors; ++v) {
              float* o = bias_out + p * kPanelCols + 16 * v;
              _mm512_mask_storeu_ps(o, mask[v], _mm512_add_ps(_mm512_maskz_loadu_ps(mask[v], o), acc[v]));
            }
          }
        }
      }
    };
    if (threads) {
      at::parallel_for(0, chunks * blocks, 1, pack);
      at::parallel_for(0, count, 1, run);
    } else {
      pack(0, chunks * blocks);
      run(0, count);
    }
  }
}
#endif

// Whether the float32 AVX-512 kernels above run (the build has AVX-512).
template <typename T>
constexpr bool packed_kernels() {
#if defined(__AVX512F__)
  return std::is_same<T, float>::value;
#else
  return false;
#endif
}

// operand^T @ g over every row (time and batch): a weight gradient, one GEMM after the loop.
// In float32 with AVX-512 the kernel above reads both in place; else oneDNN, which reads both
// with the rows along the contiguous axis, so both are transposed (measured 2.3x faster than
// at::mm's BLAS at 3200 rows, 128 by 640); g, which several weights share, once
// (weight_grad_rhs); else at::mm.
template <typename T>
inline bool weight_grad_on_onednn() {
  return !packed_kernels<T>() && std::is_same<T, float>::value && onednn_linear_op() != nullptr;
}

// g as weight_grad takes it: transposed for oneDNN, as it is elsewhere.
template <typename T>
inline at::Tensor weight_grad_rhs(const at::Tensor& g) {
  return weight_grad_on_onednn<T>() ? g.t().contiguous() : g;
}

// The gradient of the weight of a projection of `operand` whose output's gradient is g (rhs: g
// through weight_grad_rhs); bias_out, when not null, gets g's column sums (its bias gradient).
template <typename T>
inline at::Tensor weight_grad(const at::Tensor& operand, const at::Tensor& g, const at::Tensor& rhs,
                              at::Tensor* bias_out, at::Tensor& slot) {
#if defined(__AVX512F__)
  if constexpr (packed_kernels<T>()) {
    if (operand.stride(1) == 1 && g.stride(1) == 1) {
      const int64_t k = operand.size(1), n = g.size(1);
      at::Tensor out = reuse_or_empty(slot, {k, n}, g.options()).zero_();
      float* bias = nullptr;
      if (bias_out != nullptr) {
        *bias_out = at::zeros({n}, g.options());
        bias = bias_out->data_ptr<float>();
      }
      weight_grad_gemm(operand.data_ptr<float>(), operand.stride(0), g.data_ptr<float>(), g.stride(0), g.size(0), k,
                       n, out.data_ptr<float>(), bias);
      return out;
    }
  }
#endif
  (void)slot;
  if (bias_out != nullptr) *bias_out = g.sum(0);
  if (weight_grad_on_onednn<T>()) return onednn_linear(operand.t().contiguous(), rhs, at::Tensor());
  return at::mm(operand.t(), g);
}

// a @ w (+ init) for a weight read by many GEMMs of `rows` rows: a plain loop for a few rows
// (small_gemm); else, in float32, packed once into column panels for the AVX-512 kernel
// (PackedGemm) where the build has AVX-512, or into oneDNN's layout where oneDNN is present;
// else through at::mm. It writes rows of a buffer the caller names (a view of a larger one:
// the step's tape, a gradient buffer), its first terms its init rows (a bias, or the rows of a
// value the product is added to, so that no pass of its own adds them).
template <typename T>
struct Linear {
  at::Tensor w;        // (K, N)
  at::Tensor packed;   // oneDNN's layout of w^T (N, K); undefined on the other paths
  at::Tensor scratch;  // the ATen paths' contiguous copy of the operand
  bool small = false;
#if defined(__AVX512F__)
  std::shared_ptr<const PackedGemm> gemm;  // the packed path's panels; null on the others
#endif
  // slot: a workspace buffer for the packed panels (see reuse_or_empty), or null.
  Linear(const at::Tensor& w_, int64_t rows, at::Tensor* slot = nullptr) : w(w_) {
#if defined(__AVX512F__)
    if constexpr (packed_kernels<T>()) {
      if (rows > kSmallRows) {
        gemm = std::make_shared<const PackedGemm>(w_, slot);
        return;
      }
    }
#endif
    w = w_.contiguous();
    if (rows <= kSmallRows) {
      small = true;
      return;
    }
    scratch = at::empty({rows, w.size(0)}, w.options());
    if (std::is_same<T, float>::value && onednn_linear_op() != nullptr && onednn_reorder_op() != nullptr) {
      torch::jit::Stack stack{c10::IValue(w.t().contiguous()), c10::IValue(rows)};
      onednn_reorder_op()->callBoxed(&stack);
      packed = stack[0].toTensor();
    }
  }
  // out rows = init rows (init.ld 0: one row for every row, a bias; init.p null: none) + a @ w.
  // In a crew (see Team), its threads split the packed kernel's work; the other paths run on one,
  // or in a local crew on each thread's rows (as a plain loop: the ATen paths share a scratch).
  void into(View<T> a, int64_t rows, View<T> init, View<T> dst, const Team& team = Team{}) const {
#if defined(__AVX512F__)
    if constexpr (packed_kernels<T>()) {
      if (gemm) {
        (*gemm)(a.p, a.ld, rows, init.p, init.ld, dst.p, dst.ld, team);
        return;
      }
    }
#endif
    if (team.crew && team.local) {
      const int64_t r0 = team.begin(rows), r1 = team.end(rows);
      small_gemm<T>(a.row(r0), a.ld, w.data_ptr<T>(), init.p == nullptr ? nullptr : init.row(r0), init.ld,
                    dst.row(r0), dst.ld, r1 - r0, w.size(0), w.size(1));
      return;
    }
    team.serial([&] { unpacked_into(a, rows, init, dst); });
  }
  void unpacked_into(View<T> a, int64_t rows, View<T> init, View<T> dst) const {
    const int64_t k = w.size(0), n = w.size(1);
    if (small || !scratch.defined() || rows > scratch.size(0)) {
      small_gemm<T>(a.p, a.ld, w.data_ptr<T>(), init.p, init.ld, dst.p, dst.ld, rows, k, n);
      return;
    }
    const at::Tensor lhs = scratch.narrow(0, 0, rows);
    for (int64_t b = 0; b < rows; ++b) std::memcpy(lhs.data_ptr<T>() + b * k, a.row(b), sizeof(T) * k);
    const at::Tensor product = packed.defined() ? onednn_linear(lhs, packed, at::Tensor()) : at::mm(lhs, w);
    const T* r = product.data_ptr<T>();
    for (int64_t b = 0; b < rows; ++b) {
      T* o = dst.row(b);
      const T* i = init.p == nullptr ? nullptr : init.row(b);
      for (int64_t j = 0; j < n; ++j) o[j] = (i == nullptr ? T(0) : i[j]) + r[b * n + j];
    }
  }
};

// Work per parallel task: the loops over rows split only when a task has this many elements.
constexpr int64_t kGrainElements = 32768;

inline int64_t grain_rows(int64_t cols) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, cols)); }

// Whether a step of `rows` rows of `units` units runs on a crew (see Team): where the packed kernels
// run (every step GEMM a crew splits) and a step has work for several threads (from 2048
// elements a state: 16 rows of 128 units).
template <typename T>
inline bool crew_worth(int64_t rows, int64_t units) {
  return packed_kernels<T>() && rows > kSmallRows && rows * units >= 2048 && at::get_num_threads() > 1;
}

}  // namespace novolstm_rt
