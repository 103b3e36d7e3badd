// CPU implementation of the gated recurrence ops, GRU and LSTM (float32, float64). The math, the saved
// workspace ws and the returned gradients are those of fastrnn/gated_reference.py:
//
//   GRU  (G = 3H):  a = h W_hh^T; r, z = sigmoid(xw_rz + a_rz); m = a_n + b_hn; n = tanh(xw_n + r m)
//                   h' = (h - n) z + n                                   ws = [r, z, n, m]        (4H)
//   LSTM (G = 4H):  a = xw + h W_hh^T; i, f, o = sigmoid; g = tanh; c' = f c + i g; u = o tanh(c')
//                   h' = u W_hr^T (or u)                                 ws = [i, f, g, o, c'(, u)]
//
// T steps, B batch rows, H hidden units, P = proj_size or H. As in rnn_cpu.cpp every batch row is an
// independent chain (packed input: step t updates rows [0, batch_sizes[t])), so rows are split across
// threads once and each thread runs all T steps on its rows. The step loop (`run_forward`/`run_backward`)
// is written once and templated on a cell functor (`Gru`, `Lstm`) that supplies the per-step matmuls and
// the fused pointwise gate math. The per-step matmuls run an in-register kernel: on AVX-512 CPUs the one in
// zmm_step_mm.h, on weights laid out once per call in its panels (up to rows * K * N = 2^30 a thread: it beat
// MKL's sgemm at every size measured, up to 64 x 1024 x 4096 forward and 64 x 4096 x 1024 backward),
// elsewhere a portable loop compiled per vector width (up to 64^3). Larger ones call the BLAS on raw pointers.
// Inference (`*_infer`) saves no workspace. Given the layer input and W_ih (`*_infer`, and the training
// forwards `*_layer_fwd`), the AVX-512 step kernel makes each step's input projection x W_ih^T + bias itself.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

#include "blas.h"
#include "gate_activations.h"
#include "gate_rows.h"
#include "register_block.h"
#include "step_buffers.h"
#include "zmm_step_mm.h"

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define FASTRNN_GATED_CLONES __attribute__((target_clones("avx512f", "fma", "default")))
#else
#define FASTRNN_GATED_CLONES
#endif

namespace fastrnn {
namespace {

constexpr int64_t kGatedSmallStep = 64 * 64 * 64;
constexpr int64_t kZmmSmallStep = int64_t{1} << 30;
// Largest W_ih a forward op projects with step by step (see layer_input): W_ih and W_hh together stay in this
// CPU's L3 up to H = 512 (4 MB each, float32); at H = 1024 (16 MB each) they do not.
constexpr int64_t kFusedWeightBytes = int64_t{1} << 23;
constexpr int64_t kFusedStreamRows = 32;  // rows a thread from which a streamed W_ih costs no more than a GEMM
constexpr int64_t kGatedRowsPerThreadMin = 2;

// R * J = 128 bytes' worth of rows by columns per block (8 AVX-512 accumulators): enough independent FMA
// chains to cover the FMA latency whether a thread has 1, 2 or 4+ rows (with 2-row blocks of 32 columns
// only 4 chains were in flight, and 2 with one row).
template <typename T, int64_t R>
FASTRNN_INLINE void mm_rows_block(const T* a, int64_t lda, const T* b, int64_t K, int64_t N, T* out,
                                  int64_t ldo, bool accumulate) {
  constexpr int64_t J = 512 / sizeof(T) / R;
  constexpr int64_t J2 = 128 / sizeof(T);
  int64_t j0 = 0;
  for (; j0 + J <= N; j0 += J) mm_block<T, R, J>(a, lda, b, K, N, j0, out, ldo, accumulate);
  if constexpr (J2 < J) {
    for (; j0 + J2 <= N; j0 += J2) mm_block<T, R, J2>(a, lda, b, K, N, j0, out, ldo, accumulate);
  }
  for (; j0 + 8 <= N; j0 += 8) mm_block<T, R, 8>(a, lda, b, K, N, j0, out, ldo, accumulate);
  for (; j0 < N; ++j0) mm_block<T, R, 1>(a, lda, b, K, N, j0, out, ldo, accumulate);
}

template <typename T>
FASTRNN_INLINE void small_mm_impl(const T* a, int64_t lda, int64_t rows, const T* b, int64_t K,
                                  int64_t N, T* out, int64_t ldo, bool accumulate) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4)
    mm_rows_block<T, 4>(a + r * lda, lda, b, K, N, out + r * ldo, ldo, accumulate);
  for (; r + 2 <= rows; r += 2)
    mm_rows_block<T, 2>(a + r * lda, lda, b, K, N, out + r * ldo, ldo, accumulate);
  for (; r < rows; ++r) mm_rows_block<T, 1>(a + r * lda, lda, b, K, N, out + r * ldo, ldo, accumulate);
}

FASTRNN_GATED_CLONES void small_mm(const float* a, int64_t lda, int64_t rows, const float* b, int64_t K,
                                   int64_t N, float* out, int64_t ldo, bool accumulate) {
  small_mm_impl(a, lda, rows, b, K, N, out, ldo, accumulate);
}
FASTRNN_GATED_CLONES void small_mm(const double* a, int64_t lda, int64_t rows, const double* b,
                                   int64_t K, int64_t N, double* out, int64_t ldo, bool accumulate) {
  small_mm_impl(a, lda, rows, b, K, N, out, ldo, accumulate);
}

// Whether the small step matmuls take the AVX-512 kernel (zmm_step_mm.h): where the CPU has it, unless
// `fastrnn::_gated_zmm_kernel(False)` turned it off (tests and timings compare both kernels in one process).
std::atomic<bool> g_zmm_allowed{true};

bool zmm_kernel_on() {
#ifdef FASTRNN_HAVE_ZMM_KERNEL
  return have_avx512f() && g_zmm_allowed.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

// op(W) [K, N] (any strides) laid out as the step matmul's register kernel reads it: zmm_step_mm.h's
// panels where that kernel runs, else contiguous [K, N] for the portable loop.
template <typename T>
at::Tensor step_layout(const at::Tensor& kn) {
#ifdef FASTRNN_HAVE_ZMM_KERNEL
  if (zmm_kernel_on()) {
    const int64_t K = kn.size(0), N = kn.size(1), PW = 4 * Zmm<T>::L;
    const int64_t panels = (N + PW - 1) / PW;
    if (K * N > (1 << 16)) {
      return at::constant_pad_nd(kn, {0, panels * PW - N}).view({K, panels, PW}).permute({1, 0, 2}).contiguous();
    }
    // Small weights (tiny calls): one loop instead of four ATen ops, a few microseconds a call.
    at::Tensor out = at::empty({panels, K, PW}, kn.options());
    const T* src = kn.data_ptr<T>();
    const int64_t sk = kn.stride(0), sn = kn.stride(1);
    T* dst = out.data_ptr<T>();
    for (int64_t p = 0; p < panels; ++p)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < PW; ++j, ++dst) {
          const int64_t n = p * PW + j;
          *dst = n < N ? src[k * sk + n * sn] : T(0);
        }
    return out;
  }
#endif
  return kn.contiguous();
}

// One weight as the step matmuls use it: out[rows, N] (+)= a[rows, K] @ op(W). `kn` is op(W) in
// step_layout for the register kernels; `w` is the parameter for the BLAS, transposed there when `trans`.
template <typename T>
struct StepWeight {
  const T* kn;
  const T* w;
  bool trans;
  int64_t K;
  int64_t N;
  bool small;

  void apply(const T* a, int64_t lda, int64_t rows, T* out, int64_t ldo, bool accumulate) const {
    if (rows <= 0) return;
    if (small) {
#ifdef FASTRNN_HAVE_ZMM_KERNEL
      if (zmm_kernel_on()) {
        zmm_step_mm(a, lda, rows, kn, K, N, accumulate ? out : nullptr, ldo, out, ldo);
        return;
      }
#endif
      small_mm(a, lda, rows, kn, K, N, out, ldo, accumulate);
    } else {
      gemm_rowmajor<T>(rows, N, K, a, lda, w, trans ? K : N, trans, accumulate ? T(1) : T(0), out, ldo);
    }
  }
};

// ---- pointwise gate math, one row of H units at a time ----------------------------------------------

template <typename T>
FASTRNN_INLINE void gru_fwd_row_impl(const T* __restrict xw, const T* __restrict a,
                                     const T* __restrict h, const T* __restrict b_hn, int64_t H,
                                     T* __restrict y, T* __restrict ws) {
  for (int64_t j = 0; j < H; ++j) {
    const T r = sigmoid_scalar(xw[j] + a[j]);
    const T z = sigmoid_scalar(xw[H + j] + a[H + j]);
    const T m = a[2 * H + j] + b_hn[j];
    const T n = tanh_scalar(xw[2 * H + j] + r * m);
    y[j] = (h[j] - n) * z + n;
    ws[j] = r;
    ws[H + j] = z;
    ws[2 * H + j] = n;
    ws[3 * H + j] = m;
  }
}

// g = dy + dh; writes dxw = [dr, dz, dn], dg = [dr, dz, dm] (the gradient of h W_hh^T + [0, 0, b_hn]:
// the rows multiplied by W_hh, and dW_hh's left factor) and dh <- g z (the matmul then adds dg W_hh).
template <typename T>
FASTRNN_INLINE void gru_bwd_row_impl(const T* __restrict dy, T* __restrict dh, const T* __restrict h,
                                     const T* __restrict ws, int64_t H, T* __restrict dxw,
                                     T* __restrict dg) {
  for (int64_t j = 0; j < H; ++j) {
    const T r = ws[j], z = ws[H + j], n = ws[2 * H + j], m = ws[3 * H + j];
    const T g = dy[j] + dh[j];
    const T dn = g * (T(1) - z) * (T(1) - n * n);
    const T dz = g * (h[j] - n) * z * (T(1) - z);
    const T dr = dn * m * r * (T(1) - r);
    const T dmj = dn * r;
    dxw[j] = dr;
    dxw[H + j] = dz;
    dxw[2 * H + j] = dn;
    dg[j] = dr;
    dg[H + j] = dz;
    dg[2 * H + j] = dmj;
    dh[j] = g * z;
  }
}

// ws holds the pre-activations [a_i, a_f, a_g, a_o] on entry; writes the gates, c' and u = o tanh(c').
template <typename T>
FASTRNN_INLINE void lstm_fwd_row_impl(T* __restrict ws, const T* __restrict c_prev, int64_t H,
                                      T* __restrict u) {
  for (int64_t j = 0; j < H; ++j) {
    const T i = sigmoid_scalar(ws[j]);
    const T f = sigmoid_scalar(ws[H + j]);
    const T g = tanh_scalar(ws[2 * H + j]);
    const T o = sigmoid_scalar(ws[3 * H + j]);
    const T c = f * c_prev[j] + i * g;
    ws[j] = i;
    ws[H + j] = f;
    ws[2 * H + j] = g;
    ws[3 * H + j] = o;
    ws[4 * H + j] = c;
    u[j] = o * tanh_scalar(c);
  }
}

// du: the gradient of u; dc: the running cell gradient (dc_{t+1} in, dc_t = dc f out).
template <typename T>
FASTRNN_INLINE void lstm_bwd_row_impl(const T* __restrict du, T* __restrict dc,
                                      const T* __restrict ws, const T* __restrict c_prev, int64_t H,
                                      T* __restrict da) {
  for (int64_t j = 0; j < H; ++j) {
    const T i = ws[j], f = ws[H + j], g = ws[2 * H + j], o = ws[3 * H + j], c = ws[4 * H + j];
    const T tc = tanh_scalar(c);
    const T d = dc[j] + du[j] * o * (T(1) - tc * tc);
    da[j] = d * g * i * (T(1) - i);
    da[H + j] = d * c_prev[j] * f * (T(1) - f);
    da[2 * H + j] = d * i * (T(1) - g * g);
    da[3 * H + j] = du[j] * tc * o * (T(1) - o);
    dc[j] = d * f;
  }
}

}  // namespace

// Explicit float / double entry points so that target_clones compiles each body per vector width; declared
// in gate_rows.h for the single cell step (gated_cell.cpp).
#define FASTRNN_DEFINE_ROWS(T)                                                                     \
  FASTRNN_GATED_CLONES void gru_fwd_row(const T* xw, const T* a, const T* h, const T* b_hn,      \
                                        int64_t H, T* y, T* ws) {                                \
    gru_fwd_row_impl(xw, a, h, b_hn, H, y, ws);                                                    \
  }                                                                                                \
  FASTRNN_GATED_CLONES void gru_bwd_row(const T* dy, T* dh, const T* h, const T* ws, int64_t H,  \
                                        T* dxw, T* dg) {                                         \
    gru_bwd_row_impl(dy, dh, h, ws, H, dxw, dg);                                                   \
  }                                                                                                \
  FASTRNN_GATED_CLONES void lstm_fwd_row(T* ws, const T* c_prev, int64_t H, T* u) {              \
    lstm_fwd_row_impl(ws, c_prev, H, u);                                                           \
  }                                                                                                \
  FASTRNN_GATED_CLONES void lstm_bwd_row(const T* du, T* dc, const T* ws, const T* c_prev,       \
                                         int64_t H, T* da) {                                       \
    lstm_bwd_row_impl(du, dc, ws, c_prev, H, da);                                                  \
  }
FASTRNN_DEFINE_ROWS(float)
FASTRNN_DEFINE_ROWS(double)
#undef FASTRNN_DEFINE_ROWS

namespace {

// ---- the step schedule, shared by both cells ---------------------------------------------------------

struct GatedSteps {
  std::vector<int64_t> sizes;    // rows active at each step
  std::vector<int64_t> offsets;  // first packed row of each step, size T + 1
};

GatedSteps gated_steps(const at::Tensor& x, const std::optional<at::Tensor>& batch_sizes) {
  GatedSteps s;
  if (batch_sizes.has_value()) {
    const auto bs = batch_sizes->contiguous();
    const int64_t* p = bs.data_ptr<int64_t>();
    s.sizes.assign(p, p + bs.numel());
  } else {
    s.sizes.assign(x.size(0), x.size(1));
  }
  s.offsets.resize(s.sizes.size() + 1, 0);
  for (size_t t = 0; t < s.sizes.size(); ++t) s.offsets[t + 1] = s.offsets[t] + s.sizes[t];
  return s;
}

// Where step t's rows [lo, end) read their previous state: rows [lo, split) from step `prev` (the
// neighbour in walking order), rows [split, end) from the initial state.
struct PrevRows {
  int64_t split;
  int64_t prev;  // -1: no previous step
};

PrevRows prev_rows(const GatedSteps& s, int64_t i, int64_t t, int64_t lo, int64_t end, bool reverse) {
  if (i == 0) return {lo, -1};
  const int64_t tp = reverse ? t + 1 : t - 1;
  return {std::min(end, std::max(lo, s.sizes[tp])), tp};
}

template <typename F>
void for_gated_row_chunks(int64_t batch, const F& body) {
  if (batch >= 2 * kGatedRowsPerThreadMin) {
    at::parallel_for(0, batch, kGatedRowsPerThreadMin, body);
  } else {
    body(0, batch);
  }
}

// The step (in walking order) at which row r is last active: its final state lives there.
int64_t last_step_of_row(const GatedSteps& s, int64_t r, bool reverse) {
  const int64_t nsteps = static_cast<int64_t>(s.sizes.size());
  if (reverse) return 0;
  int64_t t = 0;
  while (t + 1 < nsteps && s.sizes[t + 1] > r) ++t;
  return t;
}

int64_t gated_rows_per_thread(int64_t batch) {
  const int64_t threads = std::max(1, at::get_num_threads());
  return std::max<int64_t>(1, (batch + threads - 1) / threads);
}

template <typename T>
bool gated_small(int64_t rows, int64_t K, int64_t N) {
  const int64_t limit = zmm_kernel_on() ? kZmmSmallStep : kGatedSmallStep;
  return rows * K * N <= limit || !have_fortran_gemm<T>();
}

// The layer input and its weight when a forward op makes each step's x W_ih^T + bias itself (AVX-512
// kernel only): the [T, B, G] projection (G = 3H or 4H) is then never written out and read back.
template <typename T>
struct InputProjection {
  const T* x;     // [T, B, I] or [N, I]
  int64_t I;
  const T* wt;    // W_ih^T [I, G]
  const T* bias;  // [G] or nullptr

  // out[rows of step t in [lo, end), G] = bias + x_t W_ih^T; every row starts from the bias (row stride 0).
  void step(const GatedSteps& s, int64_t t, int64_t lo, int64_t end, int64_t G, T* out, int64_t ldo) const {
#ifdef FASTRNN_HAVE_ZMM_KERNEL
    zmm_step_mm(x + (s.offsets[t] + lo) * I, I, end - lo, wt, I, G, bias, 0, out, ldo);
#endif
  }
};

// ---- GRU ---------------------------------------------------------------------------------------------

template <typename T>
void gru_forward_rows(const GatedSteps& s, int64_t lo, int64_t hi, const T* xw, const T* h0,
                      const StepWeight<T>& w, const T* b_hn, int64_t H, bool reverse, T* y, T* ws,
                      T* hn, const InputProjection<T>* xp = nullptr) {
  const int64_t nsteps = static_cast<int64_t>(s.sizes.size());
  std::vector<T> a((hi - lo) * 3 * H);  // [rows, 3H]: h W_hh^T of this thread's rows
  // ws == nullptr (inference): each step's gates go to a scratch that stays in L1. xp: the step's input
  // projection is made here, into xs, instead of read from xw.
  std::vector<T> scratch(ws == nullptr ? (hi - lo) * 4 * H : 0);  // [rows, 4H]
  std::vector<T> xs(xp != nullptr ? (hi - lo) * 3 * H : 0);        // [rows, 3H]
  for (int64_t i = 0; i < nsteps; ++i) {
    const int64_t t = reverse ? nsteps - 1 - i : i;
    const int64_t end = std::min(hi, s.sizes[t]);
    if (end <= lo) continue;
    const PrevRows p = prev_rows(s, i, t, lo, end, reverse);
    const T* prev = p.prev >= 0 ? y + (s.offsets[p.prev] + lo) * H : nullptr;
    w.apply(prev, H, p.split - lo, a.data(), 3 * H, false);
    w.apply(h0 + p.split * H, H, end - p.split, a.data() + (p.split - lo) * 3 * H, 3 * H, false);
    if (xp != nullptr) xp->step(s, t, lo, end, 3 * H, xs.data(), 3 * H);
    for (int64_t r = lo; r < end; ++r) {
      const int64_t row = s.offsets[t] + r;
      const T* h = r < p.split ? prev + (r - lo) * H : h0 + r * H;
      const T* xr = xp != nullptr ? xs.data() + (r - lo) * 3 * H : xw + row * 3 * H;
      T* wsr = ws != nullptr ? ws + row * 4 * H : scratch.data() + (r - lo) * 4 * H;
      gru_fwd_row(xr, a.data() + (r - lo) * 3 * H, h, b_hn, H, y + row * H, wsr);
    }
  }
  for (int64_t r = lo; r < hi; ++r) {
    const T* src = nsteps > 0 ? y + (s.offsets[last_step_of_row(s, r, reverse)] + r) * H : h0 + r * H;
    std::memcpy(hn + r * H, src, sizeof(T) * H);
  }
}

template <typename T>
void gru_backward_rows(const GatedSteps& s, int64_t lo, int64_t hi, const T* dy, const T* y,
                       const T* ws, const T* h0, const StepWeight<T>& w, int64_t H, bool reverse,
                       bool need_dh0, T* dxw, T* dg, T* dh) {
  const int64_t nsteps = static_cast<int64_t>(s.sizes.size());
  for (int64_t i = 0; i < nsteps; ++i) {
    const int64_t t = reverse ? i : nsteps - 1 - i;
    const int64_t end = std::min(hi, s.sizes[t]);
    if (end <= lo) continue;
    // The state this step read in the forward pass: its forward neighbour, which walks the other way.
    const PrevRows p = prev_rows(s, nsteps - 1 - i, t, lo, end, reverse);
    for (int64_t r = lo; r < end; ++r) {
      const int64_t row = s.offsets[t] + r;
      const T* h = r < p.split ? y + (s.offsets[p.prev] + r) * H : h0 + r * H;
      gru_bwd_row(dy + row * H, dh + r * H, h, ws + row * 4 * H, H, dxw + row * 3 * H,
                  dg + row * 3 * H);
    }
    if (i + 1 < nsteps || need_dh0) {
      w.apply(dg + (s.offsets[t] + lo) * 3 * H, 3 * H, end - lo, dh + lo * H, H, true);
    }
  }
}

// ---- LSTM --------------------------------------------------------------------------------------------

struct LstmShape {
  int64_t H;   // cell units
  int64_t P;   // h features (proj_size or H)
  int64_t W;   // ws row width: 5H, or 6H with a projection
  bool proj;
};

// ws == nullptr (inference): nothing is saved; each step's gates live in a [rows, W] scratch that stays in
// L1, and cn carries the running cell state (rows that have not started yet still hold c0 there).
// xp != nullptr: xw is not used; each step's input rows are projected by the step kernel.
template <typename T>
void lstm_forward_rows(const GatedSteps& s, int64_t lo, int64_t hi, const T* xw, const T* h0,
                       const T* c0, const StepWeight<T>& w, const StepWeight<T>& wr,
                       const LstmShape& d, bool reverse, T* y, T* ws, T* hn, T* cn,
                       const InputProjection<T>* xp = nullptr) {
  const int64_t nsteps = static_cast<int64_t>(s.sizes.size());
  const int64_t H = d.H, P = d.P, W = d.W;
  const bool save = ws != nullptr;
  std::vector<T> scratch(save ? 0 : (hi - lo) * W);  // [rows, W]
  if (!save) std::memcpy(cn + lo * H, c0 + lo * H, sizeof(T) * (hi - lo) * H);
  for (int64_t i = 0; i < nsteps; ++i) {
    const int64_t t = reverse ? nsteps - 1 - i : i;
    const int64_t end = std::min(hi, s.sizes[t]);
    if (end <= lo) continue;
    const PrevRows p = prev_rows(s, i, t, lo, end, reverse);
    T* out = save ? ws + (s.offsets[t] + lo) * W : scratch.data();
    if (xp != nullptr) {
      xp->step(s, t, lo, end, 4 * H, out, W);
    } else {
      for (int64_t r = lo; r < end; ++r)
        std::memcpy(out + (r - lo) * W, xw + (s.offsets[t] + r) * 4 * H, sizeof(T) * 4 * H);
    }
    const T* prev = p.prev >= 0 ? y + (s.offsets[p.prev] + lo) * P : nullptr;
    w.apply(prev, P, p.split - lo, out, W, true);
    w.apply(h0 + p.split * P, P, end - p.split, out + (p.split - lo) * W, W, true);
    for (int64_t r = lo; r < end; ++r) {
      const int64_t row = s.offsets[t] + r;
      T* gates = out + (r - lo) * W;
      T* u = d.proj ? gates + 5 * H : y + row * P;
      if (save) {
        lstm_fwd_row(gates, r < p.split ? ws + (s.offsets[p.prev] + r) * W + 4 * H : c0 + r * H, H, u);
      } else {
        lstm_fwd_row(gates, cn + r * H, H, u);
        std::memcpy(cn + r * H, gates + 4 * H, sizeof(T) * H);
      }
    }
    if (d.proj) wr.apply(out + 5 * H, W, end - lo, y + (s.offsets[t] + lo) * P, P, false);
  }
  for (int64_t r = lo; r < hi; ++r) {
    if (nsteps == 0) {
      std::memcpy(hn + r * P, h0 + r * P, sizeof(T) * P);
      if (save) std::memcpy(cn + r * H, c0 + r * H, sizeof(T) * H);
      continue;
    }
    const int64_t row = s.offsets[last_step_of_row(s, r, reverse)] + r;
    std::memcpy(hn + r * P, y + row * P, sizeof(T) * P);
    if (save) std::memcpy(cn + r * H, ws + row * W + 4 * H, sizeof(T) * H);
  }
}

template <typename T>
void lstm_backward_rows(const GatedSteps& s, int64_t lo, int64_t hi, const T* dy, const T* ws,
                        const T* c0, const StepWeight<T>& w, const StepWeight<T>& wr,
                        const LstmShape& d, bool reverse, bool need_dh0, T* da, T* dh_all, T* dh,
                        T* dc) {
  const int64_t nsteps = static_cast<int64_t>(s.sizes.size());
  const int64_t H = d.H, P = d.P, W = d.W;
  std::vector<T> g((hi - lo) * P);                   // [rows, P]: dy + dh, the gradient of h'
  std::vector<T> du(d.proj ? (hi - lo) * H : 0);     // [rows, H]: g W_hr
  for (int64_t i = 0; i < nsteps; ++i) {
    const int64_t t = reverse ? i : nsteps - 1 - i;
    const int64_t end = std::min(hi, s.sizes[t]);
    if (end <= lo) continue;
    const PrevRows p = prev_rows(s, nsteps - 1 - i, t, lo, end, reverse);
    T* gt = d.proj ? dh_all + (s.offsets[t] + lo) * P : g.data();
    for (int64_t r = lo; r < end; ++r) {
      const T* dyr = dy + (s.offsets[t] + r) * P;
      const T* dhr = dh + r * P;
      T* gr = gt + (r - lo) * P;
      for (int64_t k = 0; k < P; ++k) gr[k] = dyr[k] + dhr[k];
    }
    const T* dup = gt;
    if (d.proj) {
      wr.apply(gt, P, end - lo, du.data(), H, false);
      dup = du.data();
    }
    for (int64_t r = lo; r < end; ++r) {
      const int64_t row = s.offsets[t] + r;
      const T* c_prev = r < p.split ? ws + (s.offsets[p.prev] + r) * W + 4 * H : c0 + r * H;
      lstm_bwd_row(dup + (r - lo) * (d.proj ? H : P), dc + r * H, ws + row * W, c_prev, H,
                   da + row * 4 * H);
    }
    if (i + 1 < nsteps || need_dh0) {
      w.apply(da + (s.offsets[t] + lo) * 4 * H, 4 * H, end - lo, dh + lo * P, P, false);
    }
  }
}

// ---- argument checks ---------------------------------------------------------------------------------

void check_float_cpu(const at::Tensor& ref, std::initializer_list<const at::Tensor*> ts, const char* what) {
  TORCH_CHECK(ref.scalar_type() == at::kFloat || ref.scalar_type() == at::kDouble,
              "fastrnn: the CPU ", what, " op supports float32 and float64, got ", ref.scalar_type());
  for (const at::Tensor* t : ts) {
    TORCH_CHECK(t->device().is_cpu(), "fastrnn: the CPU ", what, " op got a tensor on ", t->device());
    TORCH_CHECK(t->scalar_type() == ref.scalar_type(), "fastrnn: the ", what,
                " op's tensors must share a dtype, got ", ref.scalar_type(), " and ",
                t->scalar_type());
  }
}

// Checks the step layout of x ([T, B, width] or packed [N, width]) against `batch` initial-state rows.
void check_layout(const at::Tensor& x, int64_t width, int64_t batch,
                  const std::optional<at::Tensor>& batch_sizes, const char* name) {
  if (batch_sizes.has_value()) {
    const auto& bs = *batch_sizes;
    TORCH_CHECK(bs.dim() == 1 && bs.scalar_type() == at::kLong && bs.device().is_cpu(),
                "fastrnn: batch_sizes must be a 1-D int64 CPU tensor");
    TORCH_CHECK(x.dim() == 2, "fastrnn: packed ", name, " must be 2-D, got ", x.sizes());
    const auto c = bs.contiguous();
    const int64_t* p = c.data_ptr<int64_t>();
    int64_t total = 0;
    for (int64_t t = 0; t < c.numel(); ++t) {
      TORCH_CHECK(p[t] > 0 && (t == 0 || p[t] <= p[t - 1]),
                  "fastrnn: batch_sizes must be positive and non-increasing");
      total += p[t];
    }
    TORCH_CHECK(total == x.size(0), "fastrnn: batch_sizes sum to ", total, " but ", name, " has ",
                x.size(0), " rows");
    TORCH_CHECK(c.numel() == 0 || p[0] == batch, "fastrnn: batch_sizes[0] is ", p[0],
                " but the state has ", batch, " rows");
  } else {
    TORCH_CHECK(x.dim() == 3 && x.size(1) == batch, "fastrnn: padded ", name, " must be [T, ", batch,
                ", ", width, "], got ", x.sizes());
  }
  TORCH_CHECK(x.size(-1) == width, "fastrnn: ", name, " must have ", width, " features, got ",
              x.size(-1));
}

// A [T, B, width] or [N, width] tensor from the step-buffer cache (step_buffers.h).
at::Tensor with_width(const at::Tensor& like, int64_t width) {
  auto sizes = like.sizes().vec();
  sizes.back() = width;
  return step_buffer(sizes, like.options());
}

// A forward op's input: the layer input x with w_ih [G, I] and bias [G] (the op projects it), or the
// projection xw itself (w_ih absent). The step kernel projects each step itself where it runs both per-step
// matmuls (`fuse`); otherwise one at::linear projects all steps first. Returns what the step loop reads.
struct LayerInput {
  at::Tensor x;
  int64_t I = 0;
  bool fuse = false;
};

LayerInput layer_input(const at::Tensor& x, const std::optional<at::Tensor>& w_ih,
                       const std::optional<at::Tensor>& bias, int64_t G, int64_t P, int64_t batch,
                       const std::optional<at::Tensor>& batch_sizes, const char* what) {
  LayerInput in;
  TORCH_CHECK(!bias.has_value() || w_ih.has_value(), "fastrnn: a bias needs w_ih");
  if (!w_ih.has_value()) {
    check_layout(x, G, batch, batch_sizes, "xw");
    in.x = x.contiguous();
    return in;
  }
  check_float_cpu(x, {&*w_ih}, what);
  TORCH_CHECK(w_ih->dim() == 2 && w_ih->size(0) == G, "fastrnn: w_ih must be [", G, ", I], got ",
              w_ih->sizes());
  if (bias.has_value()) {
    check_float_cpu(x, {&*bias}, what);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == G, "fastrnn: bias must be [", G, "], got ",
                bias->sizes());
  }
  in.I = w_ih->size(1);
  check_layout(x, in.I, batch, batch_sizes, "x");
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastrnn_layer_input", [&] {
    const int64_t rows = gated_rows_per_thread(batch);
    // Fused, each step streams W_ih once more: worth it while W_ih stays in cache, or while a thread's rows
    // are enough to hide the stream. At H = 1024 (16 MB) and 4-16 rows a thread the per-step projection made
    // LSTM inference memory-bound (B=8: 0.75x torch's oneDNN, which projects all steps in one GEMM).
    const bool w_ih_cached = in.I * G * static_cast<int64_t>(sizeof(scalar_t)) <= kFusedWeightBytes;
    in.fuse = zmm_kernel_on() && (w_ih_cached || rows >= kFusedStreamRows) &&
              gated_small<scalar_t>(rows, in.I, G) && gated_small<scalar_t>(rows, P, G);
  });
  in.x = in.fuse ? x.contiguous() : at::linear(x, *w_ih, bias).contiguous();
  return in;
}

// The InputProjection of a fused LayerInput, with the tensors it points into.
template <typename T>
struct FusedProjection {
  at::Tensor wt, b;
  InputProjection<T> xp{};

  FusedProjection(const LayerInput& in, const std::optional<at::Tensor>& w_ih,
                  const std::optional<at::Tensor>& bias) {
    if (!in.fuse) return;
    wt = step_layout<T>(w_ih->t());  // [I, G]
    b = bias.has_value() ? bias->contiguous() : at::Tensor();
    xp = {in.x.data_ptr<T>(), in.I, wt.data_ptr<T>(), b.defined() ? b.data_ptr<T>() : nullptr};
  }
  const InputProjection<T>* get(const LayerInput& in) const { return in.fuse ? &xp : nullptr; }
};

}  // namespace

// xw [T, B, 3H] or [N, 3H]; h0 [B, H]; w_hh [3H, H]; b_hn [H]. Returns y, h_n [B, H], ws (4H a row).
// save false (inference): ws is not written (an empty tensor is returned). w_ih: see LayerInput.
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_fwd_impl(
    const at::Tensor& xw, const at::Tensor& h0, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_hn, const std::optional<at::Tensor>& batch_sizes, bool reverse,
    bool save, const std::optional<at::Tensor>& w_ih = std::nullopt,
    const std::optional<at::Tensor>& bias = std::nullopt) {
  check_float_cpu(xw, {&h0, &w_hh}, "GRU");
  const int64_t H = h0.size(-1);
  TORCH_CHECK(h0.dim() == 2, "fastrnn: h0 must be [B, H], got ", h0.sizes());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 3 * H && w_hh.size(1) == H,
              "fastrnn: w_hh must be [3H, H] = [", 3 * H, ", ", H, "], got ", w_hh.sizes());
  if (b_hn.has_value()) {
    check_float_cpu(xw, {&*b_hn}, "GRU");
    TORCH_CHECK(b_hn->dim() == 1 && b_hn->size(0) == H, "fastrnn: b_hn must be [", H, "], got ",
                b_hn->sizes());
  }
  const LayerInput in = layer_input(xw, w_ih, bias, 3 * H, H, h0.size(0), batch_sizes, "GRU");
  const auto& x = in.x;
  const auto h = h0.contiguous();
  const auto w = w_hh.contiguous();
  // Zeros stand in for a missing b_hn: a conditional load would keep the gate loop from vectorising.
  const auto b = b_hn.has_value() ? b_hn->contiguous() : at::zeros({H}, h0.options());
  const GatedSteps s = gated_steps(x, batch_sizes);
  const int64_t batch = h.size(0);
  auto y = with_width(x, H);        // [T, B, H] or [N, H]
  auto ws = save ? with_width(x, 4 * H) : at::empty({0}, x.options());  // [T, B, 4H] or [N, 4H]
  auto hn = at::empty({batch, H}, h.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastrnn_gru_fwd", [&] {
    const bool small = gated_small<scalar_t>(gated_rows_per_thread(batch), H, 3 * H);
    const at::Tensor kn = small ? step_layout<scalar_t>(w.t()) : w;  // [H, 3H] for the register kernels
    const StepWeight<scalar_t> sw{kn.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), true, H, 3 * H, small};
    const scalar_t* bp = b.data_ptr<scalar_t>();
    const FusedProjection<scalar_t> fp(in, w_ih, bias);
    for_gated_row_chunks(batch, [&](int64_t lo, int64_t hi) {
      gru_forward_rows<scalar_t>(s, lo, hi, x.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), sw, bp, H,
                                 reverse, y.data_ptr<scalar_t>(), save ? ws.data_ptr<scalar_t>() : nullptr,
                                 hn.data_ptr<scalar_t>(), fp.get(in));
    });
  });
  return {y, hn, ws};
}

// The training forward: saves ws for gru_bwd.
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_fwd_cpu(
    const at::Tensor& xw, const at::Tensor& h0, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_hn, const std::optional<at::Tensor>& batch_sizes, bool reverse) {
  return gru_fwd_impl(xw, h0, w_hh, b_hn, batch_sizes, reverse, true);
}

// Inference, as lstm_infer: no workspace; with w_ih, x is the layer input and bias is
// b_ih + [b_hr, b_hz, 0].
std::tuple<at::Tensor, at::Tensor> gru_infer_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& w_ih, const std::optional<at::Tensor>& bias,
    const at::Tensor& h0, const at::Tensor& w_hh, const std::optional<at::Tensor>& b_hn,
    const std::optional<at::Tensor>& batch_sizes, bool reverse) {
  auto [y, hn, ws] = gru_fwd_impl(x, h0, w_hh, b_hn, batch_sizes, reverse, false, w_ih, bias);
  return {y, hn};
}

// Training with the input projection made per step (see LayerInput): x is the layer input, bias is
// b_ih + [b_hr, b_hz, 0]. Returns what gru_fwd returns; x W_ih^T + bias is never written out.
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_layer_fwd_cpu(
    const at::Tensor& x, const at::Tensor& w_ih, const std::optional<at::Tensor>& bias, const at::Tensor& h0,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_hn, const std::optional<at::Tensor>& batch_sizes,
    bool reverse) {
  return gru_fwd_impl(x, h0, w_hh, b_hn, batch_sizes, reverse, true, w_ih, bias);
}

// Returns dxw (3H a row), dg (3H a row: [dr, dz, dm], the gradient of h W_hh^T + [0, 0, b_hn]) and dh0
// [B, H] (meaningless without need_dh0).
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_bwd_cpu(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& y, const at::Tensor& ws,
    const at::Tensor& h0, const at::Tensor& w_hh, const std::optional<at::Tensor>& batch_sizes,
    bool reverse, bool need_dh0) {
  check_float_cpu(y, {&dy, &dh_n, &ws, &h0, &w_hh}, "GRU");
  const int64_t H = h0.size(-1);
  TORCH_CHECK(dy.sizes() == y.sizes(), "fastrnn: dy must have the shape of y ", y.sizes(), ", got ",
              dy.sizes());
  TORCH_CHECK(h0.dim() == 2 && dh_n.sizes() == h0.sizes(), "fastrnn: dh_n must be ", h0.sizes(),
              ", got ", dh_n.sizes());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 3 * H && w_hh.size(1) == H,
              "fastrnn: w_hh must be [3H, H], got ", w_hh.sizes());
  check_layout(y, H, h0.size(0), batch_sizes, "y");
  check_layout(ws, 4 * H, h0.size(0), batch_sizes, "ws");
  const auto g = step_contiguous(dy);
  const auto yc = y.contiguous();
  const auto wsc = ws.contiguous();
  const auto h = h0.contiguous();
  const auto w = w_hh.contiguous();
  const GatedSteps s = gated_steps(yc, batch_sizes);
  const int64_t batch = h.size(0);
  auto dxw = with_width(yc, 3 * H);
  auto dg = with_width(yc, 3 * H);
  auto dh = dh_n.contiguous().clone();  // dh_n in, dh0 out
  AT_DISPATCH_FLOATING_TYPES(yc.scalar_type(), "fastrnn_gru_bwd", [&] {
    const bool small = gated_small<scalar_t>(gated_rows_per_thread(batch), 3 * H, H);
    // dg [rows, 3H] @ W_hh [3H, H]: W_hh is already laid out [K, N].
    const at::Tensor kn = small ? step_layout<scalar_t>(w) : w;
    const StepWeight<scalar_t> sw{kn.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), false, 3 * H, H, small};
    for_gated_row_chunks(batch, [&](int64_t lo, int64_t hi) {
      gru_backward_rows<scalar_t>(s, lo, hi, g.data_ptr<scalar_t>(), yc.data_ptr<scalar_t>(),
                                  wsc.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), sw, H, reverse,
                                  need_dh0, dxw.data_ptr<scalar_t>(), dg.data_ptr<scalar_t>(),
                                  dh.data_ptr<scalar_t>());
    });
  });
  return {dxw, dg, dh};
}

// xw [T, B, 4H] or [N, 4H]; h0 [B, P]; c0 [B, H]; w_hh [4H, P]; w_hr [P, H]. Returns y (P a row), h_n,
// c_n and ws (5H a row, 6H with w_hr).
// w_ih: xw is the layer input x [T, B, I] or [N, I], to be projected by w_ih [4H, I] and bias [4H] here.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_fwd_impl(
    const at::Tensor& xw, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& batch_sizes, bool reverse,
    bool save, const std::optional<at::Tensor>& w_ih = std::nullopt,
    const std::optional<at::Tensor>& bias = std::nullopt) {
  check_float_cpu(xw, {&h0, &c0, &w_hh}, "LSTM");
  TORCH_CHECK(h0.dim() == 2 && c0.dim() == 2 && c0.size(0) == h0.size(0),
              "fastrnn: h0 and c0 must be [B, P] and [B, H], got ", h0.sizes(), " and ", c0.sizes());
  const int64_t H = c0.size(1), P = h0.size(1);
  const bool proj = w_hr.has_value();
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 4 * H && w_hh.size(1) == P,
              "fastrnn: w_hh must be [4H, P] = [", 4 * H, ", ", P, "], got ", w_hh.sizes());
  if (proj) {
    check_float_cpu(xw, {&*w_hr}, "LSTM");
    TORCH_CHECK(w_hr->dim() == 2 && w_hr->size(0) == P && w_hr->size(1) == H,
                "fastrnn: w_hr must be [P, H] = [", P, ", ", H, "], got ", w_hr->sizes());
  } else {
    TORCH_CHECK(P == H, "fastrnn: without w_hr, h0 and c0 must have the same features");
  }
  const int64_t batch = h0.size(0);
  const LayerInput in = layer_input(xw, w_ih, bias, 4 * H, P, batch, batch_sizes, "LSTM");
  const auto& x = in.x;
  const auto h = h0.contiguous();
  const auto c = c0.contiguous();
  const auto w = w_hh.contiguous();
  const auto wr = proj ? w_hr->contiguous() : at::Tensor();
  const GatedSteps s = gated_steps(x, batch_sizes);
  auto y = with_width(x, P);
  auto ws = save ? with_width(x, (proj ? 6 : 5) * H) : at::empty({0}, x.options());
  auto hn = at::empty({batch, P}, h.options());
  auto cn = at::empty({batch, H}, c.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastrnn_lstm_fwd", [&] {
    const int64_t rows = gated_rows_per_thread(batch);
    const bool small = gated_small<scalar_t>(rows, P, 4 * H);
    const at::Tensor kn = small ? step_layout<scalar_t>(w.t()) : w;  // [P, 4H]
    const StepWeight<scalar_t> sw{kn.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), true, P, 4 * H, small};
    StepWeight<scalar_t> swr{nullptr, nullptr, true, H, P, true};
    at::Tensor kr;
    if (proj) {
      swr.small = gated_small<scalar_t>(rows, H, P);
      kr = swr.small ? step_layout<scalar_t>(wr.t()) : wr;  // [H, P]
      swr.kn = kr.data_ptr<scalar_t>();
      swr.w = wr.data_ptr<scalar_t>();
    }
    const LstmShape d{H, P, (proj ? 6 : 5) * H, proj};
    const FusedProjection<scalar_t> fp(in, w_ih, bias);
    for_gated_row_chunks(batch, [&](int64_t lo, int64_t hi) {
      lstm_forward_rows<scalar_t>(s, lo, hi, x.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                                  c.data_ptr<scalar_t>(), sw, swr, d, reverse, y.data_ptr<scalar_t>(),
                                  save ? ws.data_ptr<scalar_t>() : nullptr, hn.data_ptr<scalar_t>(),
                                  cn.data_ptr<scalar_t>(), fp.get(in));
    });
  });
  return {y, hn, cn, ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_fwd_cpu(
    const at::Tensor& xw, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& batch_sizes, bool reverse) {
  return lstm_fwd_impl(xw, h0, c0, w_hh, w_hr, batch_sizes, reverse, true);
}

// Inference: lstm_fwd without the workspace (nothing for a backward), so no [T, B, 5H] array is allocated,
// faulted in and written. With w_ih, x is the layer input and the op adds x W_ih^T + bias itself.
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_infer_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& w_ih, const std::optional<at::Tensor>& bias,
    const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
    const std::optional<at::Tensor>& batch_sizes, bool reverse) {
  auto [y, hn, cn, ws] = lstm_fwd_impl(x, h0, c0, w_hh, w_hr, batch_sizes, reverse, false, w_ih, bias);
  return {y, hn, cn};
}

// Training with the input projection made per step, as gru_layer_fwd. Returns what lstm_fwd returns.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_fwd_cpu(
    const at::Tensor& x, const at::Tensor& w_ih, const std::optional<at::Tensor>& bias, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
    const std::optional<at::Tensor>& batch_sizes, bool reverse) {
  return lstm_fwd_impl(x, h0, c0, w_hh, w_hr, batch_sizes, reverse, true, w_ih, bias);
}

// Returns da (4H a row), the per-step gradient of h' (P a row; empty without w_hr), dh0 [B, P]
// (meaningless without need_dh0) and dc0 [B, H].
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_bwd_cpu(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n, const at::Tensor& ws,
    const at::Tensor& c0, const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
    const std::optional<at::Tensor>& batch_sizes, bool reverse, bool need_dh0) {
  check_float_cpu(ws, {&dy, &dh_n, &dc_n, &c0, &w_hh}, "LSTM");
  TORCH_CHECK(dh_n.dim() == 2 && c0.dim() == 2 && dc_n.sizes() == c0.sizes() &&
                  dh_n.size(0) == c0.size(0),
              "fastrnn: dh_n and dc_n must be [B, P] and [B, H], got ", dh_n.sizes(), " and ",
              dc_n.sizes());
  const int64_t H = c0.size(1), P = dh_n.size(1);
  const bool proj = w_hr.has_value();
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 4 * H && w_hh.size(1) == P,
              "fastrnn: w_hh must be [4H, P], got ", w_hh.sizes());
  if (proj) {
    check_float_cpu(ws, {&*w_hr}, "LSTM");
    TORCH_CHECK(w_hr->dim() == 2 && w_hr->size(0) == P && w_hr->size(1) == H,
                "fastrnn: w_hr must be [P, H], got ", w_hr->sizes());
  } else {
    TORCH_CHECK(P == H, "fastrnn: without w_hr, dh_n and dc_n must have the same features");
  }
  const int64_t batch = c0.size(0);
  check_layout(ws, (proj ? 6 : 5) * H, batch, batch_sizes, "ws");
  check_layout(dy, P, batch, batch_sizes, "dy");
  const auto g = step_contiguous(dy);
  const auto wsc = ws.contiguous();
  const auto c = c0.contiguous();
  const auto w = w_hh.contiguous();
  const auto wr = proj ? w_hr->contiguous() : at::Tensor();
  const GatedSteps s = gated_steps(wsc, batch_sizes);
  auto da = with_width(wsc, 4 * H);
  auto dh_all = proj ? with_width(g, P) : at::empty({0}, g.options());
  auto dh = dh_n.contiguous().clone();
  auto dc = dc_n.contiguous().clone();
  AT_DISPATCH_FLOATING_TYPES(wsc.scalar_type(), "fastrnn_lstm_bwd", [&] {
    const int64_t rows = gated_rows_per_thread(batch);
    // da [rows, 4H] @ W_hh [4H, P] and g [rows, P] @ W_hr [P, H]: both weights are laid out [K, N].
    const bool small = gated_small<scalar_t>(rows, 4 * H, P);
    const at::Tensor kn = small ? step_layout<scalar_t>(w) : w;
    const StepWeight<scalar_t> sw{kn.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), false, 4 * H, P, small};
    StepWeight<scalar_t> swr{nullptr, nullptr, false, P, H, true};
    at::Tensor kr;
    if (proj) {
      swr.small = gated_small<scalar_t>(rows, P, H);
      kr = swr.small ? step_layout<scalar_t>(wr) : wr;
      swr.kn = kr.data_ptr<scalar_t>();
      swr.w = wr.data_ptr<scalar_t>();
    }
    const LstmShape d{H, P, (proj ? 6 : 5) * H, proj};
    for_gated_row_chunks(batch, [&](int64_t lo, int64_t hi) {
      lstm_backward_rows<scalar_t>(s, lo, hi, g.data_ptr<scalar_t>(), wsc.data_ptr<scalar_t>(),
                                   c.data_ptr<scalar_t>(), sw, swr, d, reverse, need_dh0,
                                   da.data_ptr<scalar_t>(),
                                   proj ? dh_all.data_ptr<scalar_t>() : nullptr,
                                   dh.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>());
    });
  });
  return {da, dh_all, dh, dc};
}

// out = init + a @ b (init None: zeros) with the step matmul's register kernel: `kernel` 0 the portable
// loop, 1 the AVX-512 kernel. For tests: a [rows, K] (row stride may exceed K), b [K, N], float32/float64.
at::Tensor gated_step_mm_cpu(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& init,
                             int64_t kernel) {
  check_float_cpu(a, {&b}, "step matmul");
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0) && a.stride(1) == 1,
              "fastrnn: step matmul wants a [rows, K] with unit column stride and b [K, N], got ", a.sizes(),
              " and ", b.sizes());
  TORCH_CHECK(kernel == 0 || (kernel == 1 && zmm_kernel_on()), "fastrnn: step matmul kernel ", kernel,
              " is not available here");
  const auto bc = b.contiguous();
  const int64_t rows = a.size(0), K = b.size(0), N = b.size(1);
  auto out = init.has_value() ? init->contiguous().clone() : at::full({rows, N}, NAN, a.options());
  TORCH_CHECK(out.sizes() == at::IntArrayRef({rows, N}), "fastrnn: init must be [", rows, ", ", N, "]");
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "fastrnn_step_mm", [&] {
    const scalar_t* ap = a.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    if (kernel == 0) {
      small_mm(ap, a.stride(0), rows, bc.data_ptr<scalar_t>(), K, N, op, N, init.has_value());
    } else {
#ifdef FASTRNN_HAVE_ZMM_KERNEL
      const at::Tensor panels = step_layout<scalar_t>(bc);
      zmm_step_mm(ap, a.stride(0), rows, panels.data_ptr<scalar_t>(), K, N, init.has_value() ? op : nullptr, N,
                  op, N);
#endif
    }
  });
  return out;
}

// Turns the AVX-512 step kernel on or off for this process; returns whether it was on.
bool gated_zmm_kernel(bool enable) { return g_zmm_allowed.exchange(enable); }

}  // namespace fastrnn

// The gated ops extend the library that register.cpp defines; a fragment keeps their schemas next to them.
TORCH_LIBRARY_FRAGMENT(fastrnn, m) {
  m.def(
      "gru_fwd(Tensor xw, Tensor h0, Tensor w_hh, Tensor? b_hn, Tensor? batch_sizes, bool reverse) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "gru_bwd(Tensor dy, Tensor dh_n, Tensor y, Tensor ws, Tensor h0, Tensor w_hh, "
      "Tensor? batch_sizes, bool reverse, bool need_dh0) -> (Tensor, Tensor, Tensor)");
  m.def(
      "lstm_fwd(Tensor xw, Tensor h0, Tensor c0, Tensor w_hh, Tensor? w_hr, Tensor? batch_sizes, "
      "bool reverse) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "lstm_bwd(Tensor dy, Tensor dh_n, Tensor dc_n, Tensor ws, Tensor c0, Tensor w_hh, Tensor? w_hr, "
      "Tensor? batch_sizes, bool reverse, bool need_dh0) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "gru_infer(Tensor x, Tensor? w_ih, Tensor? bias, Tensor h0, Tensor w_hh, Tensor? b_hn, "
      "Tensor? batch_sizes, bool reverse) -> (Tensor, Tensor)");
  m.def(
      "lstm_infer(Tensor x, Tensor? w_ih, Tensor? bias, Tensor h0, Tensor c0, Tensor w_hh, Tensor? w_hr, "
      "Tensor? batch_sizes, bool reverse) -> (Tensor, Tensor, Tensor)");
  m.def(
      "gru_layer_fwd(Tensor x, Tensor w_ih, Tensor? bias, Tensor h0, Tensor w_hh, Tensor? b_hn, "
      "Tensor? batch_sizes, bool reverse) -> (Tensor, Tensor, Tensor)");
  m.def(
      "lstm_layer_fwd(Tensor x, Tensor w_ih, Tensor? bias, Tensor h0, Tensor c0, Tensor w_hh, Tensor? w_hr, "
      "Tensor? batch_sizes, bool reverse) -> (Tensor, Tensor, Tensor, Tensor)");
  // Test and timing hooks: the step matmul alone, and the switch between its two register kernels.
  m.def("_gated_step_mm(Tensor a, Tensor b, Tensor? init, int kernel) -> Tensor");
  m.def("_gated_zmm_kernel(bool enable) -> bool", &fastrnn::gated_zmm_kernel);
}

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("_gated_step_mm", &fastrnn::gated_step_mm_cpu);
  m.impl("gru_fwd", &fastrnn::gru_fwd_cpu);
  m.impl("gru_infer", &fastrnn::gru_infer_cpu);
  m.impl("gru_bwd", &fastrnn::gru_bwd_cpu);
  m.impl("lstm_fwd", &fastrnn::lstm_fwd_cpu);
  m.impl("lstm_infer", &fastrnn::lstm_infer_cpu);
  m.impl("lstm_bwd", &fastrnn::lstm_bwd_cpu);
  m.impl("gru_layer_fwd", &fastrnn::gru_layer_fwd_cpu);
  m.impl("lstm_layer_fwd", &fastrnn::lstm_layer_fwd_cpu);
}
