// The layer ops of every cell on the CPU (float32, float64): rnn_fwd / rnn_bwd (Elman), gru_* and lstm_*. The
// math, the saved workspace ws and the returned gradients are those of fastrnn/reference.py; cells.h says what
// each cell computes per step.
//
// T steps, B batch rows, H hidden units, P = proj_size or H, G = gates * H. One step loop (run_forward /
// run_backward) templated on the cell walks the steps of schedule.h over each thread's rows and multiplies
// the previous state by W_hh (step_mm.h); the ops are its instantiations. Inference (`*_infer`) saves no
// workspace. Given the layer input and W_ih (`*_infer`, `*_layer_fwd`), the AVX-512 step kernel makes each
// step's input projection x W_ih^T + bias itself where that pays (see fuse_projection).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cells.h"
#include "row_recurrence.h"
#include "rnn_cpu.h"
#include "step_buffers.h"

namespace fastrnn {

void check_batch_sizes(const at::Tensor& batch_sizes, int64_t rows, const char* x_name) {
  const auto c = batch_sizes.contiguous();
  const int64_t* p = c.data_ptr<int64_t>();
  // The running total is compared before it is added to, so no sum of batch sizes can wrap around.
  int64_t total = 0;
  for (int64_t t = 0; t < c.numel(); ++t) {
    TORCH_CHECK(p[t] > 0, "fastrnn: batch_sizes must be positive, got ", p[t], " at step ", t);
    TORCH_CHECK(t == 0 || p[t] <= p[t - 1], "fastrnn: batch_sizes must be non-increasing, got ", p[t - (t > 0)],
                " then ", p[t], " at step ", t);
    TORCH_CHECK(p[t] <= rows - total, "fastrnn: batch_sizes sum to more than the ", rows, " rows of ", x_name,
                " (at step ", t, ")");
    total += p[t];
  }
  TORCH_CHECK(total == rows, "fastrnn: batch_sizes sum to ", total, " but ", x_name, " has ", rows, " rows");
}

namespace {

// ---- the step loops ------------------------------------------------------------------------------------

template <class Cell, typename T>
void run_forward(const Steps& s, int64_t batch, const Layer<T>& L, bool reverse) {
  for_row_chunks(batch, [&](int64_t lo, int64_t hi) {
    const int64_t rows = hi - lo;
    const bool windowed = L.proj != nullptr && !s.packed() && rows > 0 && 2 * rows <= kWindowRows;
    // The cell's scratch, then the window's rows: sized to the steps this call has, at most kWindowRows.
    const int64_t most = windowed ? std::min(kWindowRows / rows, s.count()) * rows : 0;
    std::vector<T> scratch(rows * Cell::scratch(L) + most * (L.I + 4 * L.H));
    T* window_x = scratch.data() + rows * Cell::scratch(L);
    Window<T> w{batch, s.count(), 0, 0, reverse, window_x, window_x + most * L.I};
    const Chunk<T> c{L, lo, hi, scratch.data(), windowed ? &w : nullptr, 0, L.H};
    walk_steps(s, lo, hi, reverse, false, [&](const StepRows& r) {
      const StepBuffer<T> g = Cell::gates(c, r);
      Cell::input(c, r, g.p);
      if (r.prev >= 0) L.w_hh->apply(L.y + (r.prev_first + lo) * L.P, L.P, r.split - lo, g.p, g.ld, g.add);
      L.w_hh->apply(L.h0 + r.split * L.P, L.P, r.end - r.split, g.p + (r.split - lo) * g.ld, g.ld, g.add);
      Cell::pointwise(c, r, g.p);
    });
    // Row b's final state is at the last step it is active in (walking direction: step 0 when reversed).
    for (int64_t b = lo; b < hi; ++b) Cell::finish(c, b, final_row(s, b, reverse));
  });
}

inline void meet() {
#ifdef _OPENMP
#pragma omp barrier
#endif
}

// Walks the steps on each thread of a team, body(chunk, step rows), every row and the thread's share [u0, u1) of the
// units: whole panels of PW units of W_hh (every gate of them). The threads wait for each other at every `meet()`.
// Nothing in the body may throw: an exception cannot leave an OpenMP region, and a thread that left would leave the
// others waiting at a barrier.
template <class Cell, typename T, typename F>
void walk_unit_shares(const Steps& s, int64_t batch, const Layer<T>& L, bool reverse, bool backward, const F& body) {
  std::vector<T> scratch(batch * Cell::scratch(L));
  const int64_t PW = L.w_hh->panel_width(), blocks = L.H / PW;
  const auto share = [&](int64_t team, int64_t me) {
    const Chunk<T> c{L, 0, batch, scratch.data(), nullptr, blocks * me / team * PW, blocks * (me + 1) / team * PW};
    walk_steps(s, 0, batch, reverse, backward, [&](const StepRows& r) { body(c, r); });
  };
#ifdef _OPENMP
#pragma omp parallel num_threads(static_cast<int>(std::min<int64_t>(at::get_num_threads(), blocks)))
  share(omp_get_num_threads(), omp_get_thread_num());
#else
  share(1, 0);
#endif
}

// Each thread takes a share of the units (every gate of them, whole panels of W_hh) for all rows, and the threads
// meet once a step: each streams only its share of W_hh a step, and a call with fewer rows than threads still
// has them all (see split_units). The bits are run_forward's: each output is the same chain of FMAs.
template <class Cell, typename T>
void run_forward_units(const Steps& s, int64_t batch, const Layer<T>& L, bool reverse, int64_t gates) {
  walk_unit_shares<Cell>(s, batch, L, reverse, false, [&](const Chunk<T>& c, const StepRows& r) {
    const StepBuffer<T> g = Cell::gates(c, r);
    Cell::input(c, r, g.p);
    for (int64_t n0 = c.u0; n0 < gates * L.H; n0 += L.H) {
      const int64_t n1 = n0 + c.u1 - c.u0;
      if (r.prev >= 0) L.w_hh->apply_cols(L.y + r.prev_first * L.P, L.P, r.split, g.p, g.ld, g.add, n0, n1);
      L.w_hh->apply_cols(L.h0 + r.split * L.P, L.P, r.end - r.split, g.p + r.split * g.ld, g.ld, g.add, n0, n1);
    }
    Cell::pointwise(c, r, g.p);
    meet();  // the next step reads every unit of this one's h
  });
  const Chunk<T> all{L, 0, batch, nullptr, nullptr, 0, L.H};
  for (int64_t b = 0; b < batch; ++b) Cell::finish(all, b, final_row(s, b, reverse));
}

template <class Cell, typename T>
void run_backward(const Steps& s, int64_t batch, const Layer<T>& L, bool reverse, bool need_dh0) {
  for_row_chunks(batch, [&](int64_t lo, int64_t hi) {
    std::vector<T> scratch((hi - lo) * Cell::scratch(L));
    const Chunk<T> c{L, lo, hi, scratch.data(), nullptr, 0, L.H};
    walk_steps(s, lo, hi, reverse, true, [&](const StepRows& r) {
      const StepBuffer<T> dg = Cell::backward(c, r);
      // dh_t = dg W_hh; after the last step it is only dh0, which nobody may want.
      if (!r.last || need_dh0) L.w_hh->apply(dg.p, dg.ld, r.end - lo, L.dh + lo * L.P, L.P, dg.add);
    });
  });
}

// run_backward with the units split between threads as run_forward_units splits them: a thread's units of dh_t
// need every unit's gradient of the gates, so the threads meet between the step's gate math and its matmul.
template <class Cell, typename T>
void run_backward_units(const Steps& s, int64_t batch, const Layer<T>& L, bool reverse, bool need_dh0) {
  walk_unit_shares<Cell>(s, batch, L, reverse, true, [&](const Chunk<T>& c, const StepRows& r) {
    const StepBuffer<T> dg = Cell::backward(c, r);
    meet();
    if (!r.last || need_dh0) L.w_hh->apply_cols(dg.p, dg.ld, r.end, L.dh, L.P, dg.add, c.u0, c.u1);
  });
}

// Calls f(Kind{}) with Kind::type<T> the cell of `gates` (1: Elman with `act`, 3: GRU, 4: LSTM).
template <template <typename> class C>
struct CellKind {
  template <typename T>
  using type = C<T>;
};

template <typename F>
void with_cell(int64_t gates, int64_t act, const F& f) {
  if (gates == 3) {
    f(CellKind<Gru>{});
  } else if (gates == 4) {
    f(CellKind<Lstm>{});
  } else if (act == kTanh) {
    f(CellKind<ElmanTanh>{});
  } else {
    f(CellKind<ElmanRelu>{});
  }
}

// ---- argument checks, one wording for every op ---------------------------------------------------------

const at::Tensor* opt(const std::optional<at::Tensor>& t) { return t.has_value() ? &*t : nullptr; }

at::DimVector with_last(at::IntArrayRef sizes, int64_t width) {
  at::DimVector v(sizes);
  if (!v.empty()) v.back() = width;
  return v;
}

struct Check {
  const char* op;

  // The tensors given (nullptr: an absent optional): not None, CPU, float32/float64 like the first.
  void tensors(std::initializer_list<std::pair<const at::Tensor*, const char*>> ts) const {
    for (const auto& [t, name] : ts) {
      // Python's None reaches a Tensor argument of a torch.ops call as an undefined tensor.
      TORCH_CHECK(t == nullptr || t->defined(), "fastrnn::", op, ": argument '", name, "' must be a Tensor, got None");
    }
    const auto& [ref, ref_name] = *ts.begin();
    TORCH_CHECK(ref->scalar_type() == at::kFloat || ref->scalar_type() == at::kDouble, "fastrnn::", op,
                ": the CPU op supports float32 and float64, got ", ref->scalar_type());
    for (const auto& [t, name] : ts) {
      if (t == nullptr) continue;
      TORCH_CHECK(t->device().is_cpu(), "fastrnn::", op, ": the CPU op got ", name, " on ", t->device());
      TORCH_CHECK(t->scalar_type() == ref->scalar_type(), "fastrnn::", op, ": the tensors must share a dtype, got ",
                  ref->scalar_type(), " (", ref_name, ") and ", t->scalar_type(), " (", name, ")");
    }
  }

  template <typename... Sym>
  void shape(const at::Tensor& t, const char* name, at::IntArrayRef want, const Sym&... sym) const {
    TORCH_CHECK(t.sizes() == want, "fastrnn::", op, ": expected ", name, " of shape ", want, ", got ", t.sizes(),
                " (", name, " must be ", sym..., ")");
  }

  // The steps of x: [T, B, width] padded or [N, width] packed by batch_sizes; sets batch (packed without
  // steps: left as it is).
  Steps steps(const at::Tensor& x, const char* name, int64_t width, const std::optional<at::Tensor>& batch_sizes,
              int64_t& batch) const {
    TORCH_CHECK(x.dim() > 0 && x.size(-1) == width, "fastrnn::", op, ": ", name, " must have ", width,
                " features, got ", x.dim() > 0 ? x.size(-1) : 0);
    if (batch_sizes.has_value()) {
      const auto& bs = *batch_sizes;
      TORCH_CHECK(bs.dim() == 1 && bs.scalar_type() == at::kLong && bs.device().is_cpu(), "fastrnn::", op,
                  ": batch_sizes must be a 1-D int64 CPU tensor, got ", bs.dim(), "-D ", bs.scalar_type(), " on ",
                  bs.device());
      TORCH_CHECK(x.dim() == 2, "fastrnn::", op, ": packed ", name, " must be [N, ", width, "], got ", x.sizes());
      check_batch_sizes(bs, x.size(0), name);
      const auto c = bs.contiguous();
      if (c.numel() > 0) batch = c.data_ptr<int64_t>()[0];
      return Steps(c.data_ptr<int64_t>(), c.numel(), batch);
    }
    TORCH_CHECK(x.dim() == 3, "fastrnn::", op, ": padded ", name, " must be [T, B, ", width, "], got ", x.sizes());
    batch = x.size(1);
    return Steps(nullptr, x.size(0), batch);
  }

  // t has the steps of ref ([T, B, .] or [N, .]) and `width` features.
  void rows(const at::Tensor& t, const char* name, const at::Tensor& ref, int64_t width, const char* what) const {
    TORCH_CHECK(t.dim() == ref.dim() && t.sizes().slice(0, t.dim() - 1) == ref.sizes().slice(0, ref.dim() - 1) &&
                    t.size(-1) == width,
                "fastrnn::", op, ": expected ", name, " of shape ", at::IntArrayRef(with_last(ref.sizes(), width)),
                " (", what, "), got ", t.sizes());
  }
};

int64_t last_dim(const at::Tensor& t) { return t.dim() > 0 ? t.size(-1) : 0; }

// G's name in messages.
const char* gates_name(int64_t gates) { return gates == 1 ? "H" : gates == 3 ? "3H" : "4H"; }

// A [T, B, width] or [N, width] tensor from the step-buffer cache (step_buffers.h).
at::Tensor with_width(const at::Tensor& like, int64_t width) {
  return step_buffer(with_last(like.sizes(), width), like.options());
}

// b_ih + b_hh as torch adds them (the whole-stack call passes them apart), but for the GRU's b_hn, b_hh's last H,
// which stays inside the reset product: out [G] = b_ih + [b_hr, b_hz, 0].
template <typename T>
void fold_biases(const T* b_ih, const T* b_hh, int64_t gates, int64_t H, T* out) {
  for (int64_t j = 0; j < gates * H; ++j) out[j] = gates == 3 && j >= 2 * H ? b_ih[j] : b_ih[j] + b_hh[j];
}

at::Tensor folded_bias(const at::Tensor& b_ih, const at::Tensor& b_hh, int64_t gates) {
  const at::Tensor bi = b_ih.contiguous(), bh = b_hh.contiguous();
  at::Tensor out = step_buffer(bi.sizes(), bi.options());
  AT_DISPATCH_FLOATING_TYPES(bi.scalar_type(), "fastrnn_folded_bias", [&] {
    fold_biases(bi.data_ptr<scalar_t>(), bh.data_ptr<scalar_t>(), gates, bi.numel() / gates, out.data_ptr<scalar_t>());
  });
  return out;
}

// Whether the step kernel makes each step's x W_ih^T + bias (AVX-512 kernel only) rather than one GEMM (mm_nn's)
// for all steps before them. Measured on the 2-core AVX-512 machine (benchmarks/NOTES.md, "The input projection:
// one GEMM or in the steps"), the GEMM wins but where
// - the projection is tiny (T=5 B=1 H=8: its call costs more than the arithmetic, 1.3 us of 8.6);
// - both threads step (B >= 4) with W_ih in L2 (H <= 128 LSTM), or with 32+ rows a thread and W_ih <= 1 MB:
//   the steps' kernel then uses each W_ih vector often enough, and [T, B, G] is never written and read back.
// With B < 4 one thread steps while the GEMM has both (GRU T=1000 B=1 H=32: 195 us against 237 fused). The Elman
// (G = H) fuses a tiny projection only: T=1000 B=4 H=64, 476 us GEMM first against 505 fused.
constexpr int64_t kFusedTinyMacs = int64_t{1} << 16;
constexpr int64_t kFusedSmallWeightBytes = int64_t{1} << 18;
constexpr int64_t kFusedWeightBytes = int64_t{1} << 20;
constexpr int64_t kFusedStreamRows = 32;

bool fuse_projection(int64_t gates, int64_t total_rows, int64_t batch, int64_t I, int64_t G, int64_t P,
                     int64_t elem_bytes) {
  const int64_t rows = rows_per_thread(batch), w_ih_bytes = I * G * elem_bytes;
  const bool pays = total_rows * I * G <= kFusedTinyMacs ||
                    (gates > 1 && batch >= 2 * kRowsPerThreadMin && (w_ih_bytes <= kFusedSmallWeightBytes ||
                                                        (rows >= kFusedStreamRows && w_ih_bytes <= kFusedWeightBytes)));
  return zmm_kernel_on() && pays && rows * I * G <= kZmmSmallStep && rows * P * G <= kZmmSmallStep;
}

// Whether the threads split each step's units (run_forward_units, run_backward_units) rather than its rows. Rows
// leave a thread idle below 2 * kRowsPerThreadMin rows, and with 1-2 rows a thread each streams all of W_hh a step
// for 1-2 FMAs a vector loaded. Units pay there from a W_hh of 1 MB (one thread idle) or 4 MB (2 rows a thread), module
// inference, 2 threads, p10 ms rows -> units (benchmarks/NOTES.md): LSTM T=100 B=1 H=1024 33-37 -> 22-24, B=4
// H=1024 52 -> 44-45, T=1000 B=1 H=256 15 -> 8.6; GRU B=2 H=1024 28-29 -> 20; RNN B=1 H=512 1.6 -> 1.0. Not
// below: RNN B=1 H=256 (256 KB) 0.37 -> 0.44, GRU B=4 H=512 (3 MB) 8.7-9.3 -> 9.4-9.7, LSTM B=64 H=1024 level
// or slower (the barrier a step, the copies of a thread's columns).
constexpr int64_t kSplitUnitsAloneBytes = int64_t{1} << 20;
constexpr int64_t kSplitUnitsBytes = int64_t{4} << 20;

// 0: never split, 1: where it pays (above), 2: wherever it can (tests); and the layer calls that split (counted
// where split_units says so).
std::atomic<int64_t> g_split_units_mode{1};
std::atomic<int64_t> g_split_units_calls{0};

template <typename T>
bool split_units(const StepWeight<T>& w, int64_t batch, int64_t H, int64_t P, int64_t G, bool fused, bool proj) {
#ifdef _OPENMP
  const int64_t mode = g_split_units_mode.load(std::memory_order_relaxed), PW = w.panel_width();
  const int64_t bytes = G * P * int64_t{sizeof(T)};
  const bool pays = batch < 2 * kRowsPerThreadMin ? bytes >= kSplitUnitsAloneBytes
                                                  : rows_per_thread(batch) <= 2 && bytes >= kSplitUnitsBytes;
  const bool can = PW > 0 && !fused && !proj && H % PW == 0 && H / PW >= 2 && at::get_num_threads() >= 2 &&
                   !at::in_parallel_region();
  const bool split = can && (mode == 2 || (mode == 1 && pays));
  if (split) g_split_units_calls.fetch_add(1, std::memory_order_relaxed);
  return split;
#else
  return false;
#endif
}

}  // namespace

// ---- the entries ---------------------------------------------------------------------------------------

// The forward ops of every cell (gates 1: Elman with `act`, 3: GRU, 4: LSTM): x is xw [T, B, G] / [N, G], or
// with w_ih [G, I] the layer input [T, B, I] / [N, I] (bias [G], or b_ih and b_hh apart as torch's modules hold
// them); h0 [B, P]; c0 [B, H] (LSTM, else undefined); w_hh [G, P]; w_hr [P, H]; b_hn [H] (GRU). Returns y [.., P],
// h_n [B, P], c_n [B, H] (LSTM) and, with save, ws [.., W] (GRU 4H, LSTM 5H or 6H with w_hr).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_forward(
    const char* op, int64_t gates, int64_t act, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& b_hn,
    const std::optional<at::Tensor>& batch_sizes, bool reverse, bool save, const std::optional<at::Tensor>& w_ih,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& b_hh) {
  const Check check{op};
  const bool lstm = gates == 4, proj = w_hr.has_value();
  const char* x_name = w_ih.has_value() ? "x" : "xw";
  check.tensors({{&x, x_name}, {&h0, "h0"}, {lstm ? &c0 : nullptr, "c0"}, {&w_hh, "w_hh"}, {opt(w_hr), "w_hr"},
                 {opt(b_hn), "b_hn"}, {opt(w_ih), "w_ih"}, {opt(bias), "bias"}, {opt(b_hh), "b_hh"}});
  TORCH_CHECK(gates != 1 || act == kTanh || act == kRelu, "fastrnn::", op,
              ": activation must be 0 (tanh) or 1 (relu), got ", act);
  TORCH_CHECK(!bias.has_value() || w_ih.has_value(), "fastrnn::", op, ": a bias needs w_ih");
  TORCH_CHECK(!b_hh.has_value() || (bias.has_value() && !b_hn.has_value()), "fastrnn::", op, ": b_hh needs b_ih");
  const int64_t P = last_dim(h0), H = lstm ? last_dim(c0) : P, G = gates * H;
  int64_t I = G;
  if (w_ih.has_value()) {
    I = w_ih->dim() == 2 ? w_ih->size(1) : -1;
    check.shape(*w_ih, "w_ih", {G, I}, "[", gates_name(gates), ", I]");
  }
  int64_t batch = h0.dim() > 0 ? h0.size(0) : 0;
  const Steps s = check.steps(x, x_name, I, batch_sizes, batch);
  check.shape(h0, "h0", {batch, P}, lstm ? "[B, P]" : "[B, H]");
  if (lstm) check.shape(c0, "c0", {batch, H}, "[B, H]");
  check.shape(w_hh, "w_hh", {G, P}, gates == 1 ? "square [" : "[", gates_name(gates), lstm ? ", P]" : ", H]");
  if (proj) check.shape(*w_hr, "w_hr", {P, H}, "[P, H]");
  TORCH_CHECK(!lstm || proj || P == H, "fastrnn::", op, ": without w_hr, h0 and c0 must have the same features, got ",
              P, " and ", H);
  if (b_hn.has_value()) check.shape(*b_hn, "b_hn", {H}, "[H]");
  if (bias.has_value()) check.shape(*bias, "bias", {G}, "[", gates_name(gates), "]");
  if (b_hh.has_value()) check.shape(*b_hh, "b_hh", {G}, "[", gates_name(gates), "]");

  const int64_t rows = rows_per_thread(batch);
  at::Tensor xc = x.contiguous();
  const int64_t total_rows = xc.dim() == 3 ? xc.size(0) * xc.size(1) : xc.size(0);
  const bool fuse = w_ih.has_value() && fuse_projection(gates, total_rows, batch, I, G, P, x.element_size());
  // One float Elman row, unfused: the latency-bound row kernel (row_recurrence.h), on the projection made first.
  const bool row_kernel = !fuse && gates == 1 && batch == 1 && x.scalar_type() == at::kFloat && row_kernel_takes(1, H);
  const bool projected = w_ih.has_value() && !fuse;
  if (projected)  // x W_ih^T + bias for all steps in one GEMM
    xc = mm_nn_cpu(xc.view({total_rows, I}), w_ih->t(), b_hh ? folded_bias(*bias, *b_hh, gates) : bias)
             .view(with_last(xc.sizes(), G));
  const auto h = h0.contiguous();
  const auto c = lstm ? c0.contiguous() : at::Tensor();
  const auto w = w_hh.contiguous();
  const auto wr = proj ? w_hr->contiguous() : at::Tensor();
  const auto wi = fuse ? w_ih->contiguous() : at::Tensor();
  const int64_t W = gates == 3 ? 4 * H : lstm ? (proj ? 6 : 5) * H : 0;
  auto y = gates == 1 && projected ? xc : with_width(xc, P);  // [T, B, P] or [N, P]; Elman: in place on its projection
  auto ws = save && W > 0 ? with_width(xc, W) : at::Tensor();  // [T, B, W] or [N, W]
  auto hn = step_buffer({batch, P}, h.options());
  auto cn = lstm ? step_buffer({batch, H}, c.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "fastrnn_layer_forward", [&] {
    using T = scalar_t;
    if constexpr (std::is_same_v<T, float>) {
      if (row_kernel) {
        std::vector<float> wt(H * H);  // W^T, [k, j] = W[j, k]
        lay_out_panels(w.data_ptr<float>(), 1, H, H, H, H, wt.data());
        const int64_t n = s.count();
        elman_row_forward(n, [&](int64_t i) { return s.offset(reverse ? n - 1 - i : i); }, xc.data_ptr<float>(),
                          h.data_ptr<float>(), wt.data(), H, act, y.data_ptr<float>(), hn.data_ptr<float>());
        return;
      }
    }
    const StepWeight<T> sw(w.data_ptr<T>(), true, P, G, rows);
    const StepWeight<T> swr = proj ? StepWeight<T>(wr.data_ptr<T>(), true, H, P, rows) : StepWeight<T>();
    const StepWeight<T> sp = fuse ? StepWeight<T>(wi.data_ptr<T>(), true, I, G, rows) : StepWeight<T>();
    // Zeros stand in for a missing b_hn: a conditional load would keep the gate loop from vectorising.
    std::vector<T> zeros(gates == 3 && !b_hn.has_value() && !b_hh.has_value() ? H : 0, T(0));
    const auto bh = b_hn.has_value() ? b_hn->contiguous() : b_hh.has_value() ? b_hh->contiguous() : at::Tensor();
    const auto bi = fuse && bias.has_value() ? bias->contiguous() : at::Tensor();
    std::vector<T> joint(bi.defined() && b_hh.has_value() ? G : 0);  // b_ih + b_hh, where they came apart
    if (!joint.empty()) fold_biases(bi.data_ptr<T>(), bh.data_ptr<T>(), gates, H, joint.data());
    Layer<T> L;
    L.H = H, L.P = P, L.W = W, L.x = xc.data_ptr<T>(), L.I = I, L.h0 = h.data_ptr<T>(), L.c0 = ptr_or_null<T>(c);
    L.proj = fuse ? &sp : nullptr, L.bias = joint.empty() ? ptr_or_null<T>(bi) : joint.data();
    L.b_hn = !bh.defined() || gates != 3 ? zeros.data() : bh.data_ptr<T>() + (b_hh.has_value() ? 2 * H : 0);
    L.w_hh = &sw, L.w_hr = proj ? &swr : nullptr;
    L.y = y.data_ptr<T>(), L.ws = ptr_or_null<T>(ws), L.hn = hn.data_ptr<T>(), L.cn = ptr_or_null<T>(cn);
    if (lstm && !save) std::memcpy(L.cn, L.c0, sizeof(T) * batch * H);  // inference: the running cell state
    const bool units = split_units(sw, batch, H, P, G, fuse, proj);
    with_cell(gates, act, [&](auto kind) {
      using Cell = typename decltype(kind)::template type<T>;
      if (units) return run_forward_units<Cell>(s, batch, L, reverse, gates);
      run_forward<Cell>(s, batch, L, reverse);
    });
  });
  return {y, hn, cn, ws};
}

// The backward ops of every cell. Elman: `state` is dh_n, ys = y; GRU: ys = y with ws [.., 4H] and h0 [B, H];
// LSTM: ys = ws [.., W] with c0 [B, H] and dc_n. dy [.., P], dh_n [B, P], w_hh [G, P], w_hr [P, H]. Returns
// the gradient of the gates (Elman dz, GRU dxw, LSTM da), GRU dg / LSTM dh_all (the gradient of each h',
// empty without w_hr), dh0 (meaningless without need_dh0) and dc0 (LSTM).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_backward(
    const char* op, int64_t gates, int64_t act, const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n,
    const at::Tensor& y, const at::Tensor& ws, const at::Tensor& state0, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& batch_sizes, bool reverse,
    bool need_dh0) {
  const Check check{op};
  const bool gru = gates == 3, lstm = gates == 4, proj = w_hr.has_value();
  const at::Tensor& steps_of = lstm ? ws : y;
  check.tensors({{&steps_of, lstm ? "ws" : "y"}, {&dy, "dy"}, {&dh_n, "dh_n"}, {lstm ? &dc_n : nullptr, "dc_n"},
                 {gru ? &ws : nullptr, "ws"}, {gates > 1 ? &state0 : nullptr, lstm ? "c0" : "h0"}, {&w_hh, "w_hh"},
                 {opt(w_hr), "w_hr"}});
  TORCH_CHECK(gates != 1 || act == kTanh || act == kRelu, "fastrnn::", op,
              ": activation must be 0 (tanh) or 1 (relu), got ", act);
  const int64_t H = gates > 1 ? last_dim(state0) : last_dim(dh_n), P = lstm ? last_dim(dh_n) : H, G = gates * H;
  const int64_t W = gru ? 4 * H : lstm ? (proj ? 6 : 5) * H : H;
  int64_t batch = dh_n.dim() > 0 ? dh_n.size(0) : 0;
  const Steps s = check.steps(steps_of, lstm ? "ws" : "y", lstm ? W : H, batch_sizes, batch);
  check.rows(dy, "dy", steps_of, P, lstm ? "the steps of ws, P features" : "the shape of y");
  if (gru) check.rows(ws, "ws", y, W, "the steps of y, 4H features");
  check.shape(dh_n, "dh_n", {batch, P}, lstm ? "[B, P]" : "[B, H]");
  if (lstm) check.shape(dc_n, "dc_n", {batch, H}, "[B, H]");
  if (gates > 1) check.shape(state0, lstm ? "c0" : "h0", {batch, H}, "[B, H]");
  check.shape(w_hh, "w_hh", {G, P}, gates == 1 ? "square [" : "[", gates_name(gates), lstm ? ", P]" : ", H]");
  if (proj) check.shape(*w_hr, "w_hr", {P, H}, "[P, H]");
  TORCH_CHECK(!lstm || proj || P == H, "fastrnn::", op,
              ": without w_hr, dh_n and dc_n must have the same features, got ", P, " and ", H);

  const auto g = step_contiguous(dy);
  const auto yc = gates < 4 ? y.contiguous() : at::Tensor();
  const auto wsc = gates > 1 ? ws.contiguous() : at::Tensor();
  const auto s0 = gates > 1 ? state0.contiguous() : at::Tensor();
  const auto w = w_hh.contiguous();
  const auto wr = proj ? w_hr->contiguous() : at::Tensor();
  const at::Tensor& lead = lstm ? wsc : yc;
  auto dgates = with_width(lead, G);
  auto second = gru ? with_width(lead, G) : proj ? with_width(g, P) : at::Tensor();
  auto dh = step_copy(dh_n);  // dh_n in, dh0 out
  auto dc = lstm ? step_copy(dc_n) : at::Tensor();  // dc_n in, dc0 out
  AT_DISPATCH_FLOATING_TYPES(lead.scalar_type(), "fastrnn_layer_backward", [&] {
    using T = scalar_t;
    const int64_t rows = rows_per_thread(batch);
    const StepWeight<T> sw(w.data_ptr<T>(), false, G, P, rows);
    const StepWeight<T> swr = proj ? StepWeight<T>(wr.data_ptr<T>(), false, P, H, rows) : StepWeight<T>();
    Layer<T> L;
    L.H = H, L.P = P, L.W = W, L.w_hh = &sw, L.w_hr = proj ? &swr : nullptr;
    L.y = ptr_or_null<T>(yc), L.ws = ptr_or_null<T>(wsc);
    L.h0 = gru ? s0.data_ptr<T>() : nullptr, L.c0 = lstm ? s0.data_ptr<T>() : nullptr;
    L.dy = g.data_ptr<T>(), L.dh = dh.data_ptr<T>(), L.dc = ptr_or_null<T>(dc), L.dgates = dgates.data_ptr<T>();
    L.dg = gru ? second.data_ptr<T>() : nullptr, L.dh_all = proj ? second.data_ptr<T>() : nullptr;
    const bool units = split_units(sw, batch, H, P, G, false, proj);
    with_cell(gates, act, [&](auto kind) {
      using Cell = typename decltype(kind)::template type<T>;
      if (units) return run_backward_units<Cell>(s, batch, L, reverse, need_dh0);
      run_backward<Cell>(s, batch, L, reverse, need_dh0);
    });
  });
  if (lstm && !proj) second = at::empty({0}, g.options());
  return {dgates, second, dh, dc};
}

// xw [T, B, H] (batch_sizes empty) or [N, H] (packed); h0 [B, H]; w_hh [H, H]. Returns y (shape of xw), h_n [B, H].
std::tuple<at::Tensor, at::Tensor> rnn_fwd_cpu(const at::Tensor& xw, const at::Tensor& h0, const at::Tensor& w_hh,
                                               const std::optional<at::Tensor>& batch_sizes, bool reverse,
                                               int64_t activation) {
  auto [y, hn, cn, ws] = layer_forward("rnn_fwd", 1, activation, xw, h0, {}, w_hh, {}, {}, batch_sizes, reverse, false);
  return {y, hn};
}

// dy and y: shape of xw; dh_n [B, H]. Returns dz (shape of y) and dh0 [B, H]; without need_dh0 the last step's
// dz W_hh is skipped and dh0 holds no meaningful values.
std::tuple<at::Tensor, at::Tensor> rnn_bwd_cpu(const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& y,
                                               const at::Tensor& w_hh, const std::optional<at::Tensor>& batch_sizes,
                                               bool reverse, int64_t activation, bool need_dh0) {
  auto [dz, unused, dh, dc] =
      layer_backward("rnn_bwd", 1, activation, dy, dh_n, {}, y, {}, {}, w_hh, {}, batch_sizes, reverse, need_dh0);
  return {dz, dh};
}

// xw [T, B, 3H] or [N, 3H]; h0 [B, H]; w_hh [3H, H]; b_hn [H]. Returns y, h_n [B, H], ws (4H a row).
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_fwd_cpu(const at::Tensor& xw, const at::Tensor& h0,
                                                           const at::Tensor& w_hh, const std::optional<at::Tensor>& b_hn,
                                                           const std::optional<at::Tensor>& batch_sizes, bool reverse) {
  auto [y, hn, cn, ws] = layer_forward("gru_fwd", 3, 0, xw, h0, {}, w_hh, {}, b_hn, batch_sizes, reverse, true);
  return {y, hn, ws};
}

// Inference, as lstm_infer: no workspace; with w_ih, x is the layer input and bias is b_ih + [b_hr, b_hz, 0].
std::tuple<at::Tensor, at::Tensor> gru_infer_cpu(const at::Tensor& x, const std::optional<at::Tensor>& w_ih,
                                                 const std::optional<at::Tensor>& bias, const at::Tensor& h0,
                                                 const at::Tensor& w_hh, const std::optional<at::Tensor>& b_hn,
                                                 const std::optional<at::Tensor>& batch_sizes, bool reverse) {
  auto [y, hn, cn, ws] = layer_forward("gru_infer", 3, 0, x, h0, {}, w_hh, {}, b_hn, batch_sizes, reverse, false,
                                       w_ih, bias);
  return {y, hn};
}

// Training with the input projection made per step where that pays (fuse_projection), else in one GEMM first:
// x is the layer input, bias is b_ih + [b_hr, b_hz, 0]. Returns what gru_fwd returns.
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_layer_fwd_cpu(
    const at::Tensor& x, const at::Tensor& w_ih, const std::optional<at::Tensor>& bias, const at::Tensor& h0,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_hn, const std::optional<at::Tensor>& batch_sizes,
    bool reverse) {
  auto [y, hn, cn, ws] = layer_forward("gru_layer_fwd", 3, 0, x, h0, {}, w_hh, {}, b_hn, batch_sizes, reverse, true,
                                       w_ih, bias);
  return {y, hn, ws};
}

// Returns dxw (3H a row), dg (3H a row: [dr, dz, dm], the gradient of h W_hh^T + [0, 0, b_hn]) and dh0.
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_bwd_cpu(const at::Tensor& dy, const at::Tensor& dh_n,
                                                           const at::Tensor& y, const at::Tensor& ws,
                                                           const at::Tensor& h0, const at::Tensor& w_hh,
                                                           const std::optional<at::Tensor>& batch_sizes, bool reverse,
                                                           bool need_dh0) {
  auto [dxw, dg, dh, dc] =
      layer_backward("gru_bwd", 3, 0, dy, dh_n, {}, y, ws, h0, w_hh, {}, batch_sizes, reverse, need_dh0);
  return {dxw, dg, dh};
}

// xw [T, B, 4H] or [N, 4H]; h0 [B, P]; c0 [B, H]; w_hh [4H, P]; w_hr [P, H]. Returns y (P a row), h_n, c_n
// and ws (5H a row, 6H with w_hr).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_fwd_cpu(
    const at::Tensor& xw, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& batch_sizes, bool reverse) {
  return layer_forward("lstm_fwd", 4, 0, xw, h0, c0, w_hh, w_hr, {}, batch_sizes, reverse, true);
}

// Inference: lstm_fwd without the workspace (nothing for a backward), so no [T, B, 5H] array is allocated,
// faulted in and written. With w_ih, x is the layer input and the op adds x W_ih^T + bias itself.
std::tuple<at::Tensor, at::Tensor, at::Tensor> lstm_infer_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& w_ih, const std::optional<at::Tensor>& bias,
    const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
    const std::optional<at::Tensor>& batch_sizes, bool reverse) {
  auto [y, hn, cn, ws] =
      layer_forward("lstm_infer", 4, 0, x, h0, c0, w_hh, w_hr, {}, batch_sizes, reverse, false, w_ih, bias);
  return {y, hn, cn};
}

// Training, the input projection as gru_layer_fwd makes it. Returns what lstm_fwd returns.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_fwd_cpu(
    const at::Tensor& x, const at::Tensor& w_ih, const std::optional<at::Tensor>& bias, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
    const std::optional<at::Tensor>& batch_sizes, bool reverse) {
  return layer_forward("lstm_layer_fwd", 4, 0, x, h0, c0, w_hh, w_hr, {}, batch_sizes, reverse, true, w_ih, bias);
}

// Returns da (4H a row), the per-step gradient of h' (P a row; empty without w_hr), dh0 [B, P] (meaningless
// without need_dh0) and dc0 [B, H].
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_bwd_cpu(
    const at::Tensor& dy, const at::Tensor& dh_n, const at::Tensor& dc_n, const at::Tensor& ws, const at::Tensor& c0,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& batch_sizes,
    bool reverse, bool need_dh0) {
  return layer_backward("lstm_bwd", 4, 0, dy, dh_n, dc_n, {}, ws, c0, w_hh, w_hr, batch_sizes, reverse, need_dh0);
}

// out = init + a @ b (init None: zeros) with the step matmul's register kernel: `kernel` 0 the portable
// loop, 1 the AVX-512 kernel. For tests: a [rows, K] (row stride may exceed K), b [K, N], float32/float64.
at::Tensor gated_step_mm_cpu(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& init,
                             int64_t kernel) {
  Check{"_gated_step_mm"}.tensors({{&a, "a"}, {&b, "b"}, {opt(init), "init"}});
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0) && a.stride(1) == 1,
              "fastrnn: step matmul wants a [rows, K] with unit column stride and b [K, N], got ", a.sizes(), " and ",
              b.sizes());
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
      std::unique_ptr<scalar_t[]> storage;
      const scalar_t* panels = lay_out_step_weight(bc.data_ptr<scalar_t>(), N, 1, K, N, storage);
      zmm_step_mm(ap, a.stride(0), rows, panels, K, N, init.has_value() ? op : nullptr, N, op, N);
#endif
    }
  });
  return out;
}

// Turns the AVX-512 step kernel on or off for this process; returns whether it was on.
bool gated_zmm_kernel(bool enable) { return g_zmm_allowed.exchange(enable); }

// Sets when layers split the units between threads (0 never, 1 where it pays, 2 wherever it can); returns
// the mode before and how many layer calls split since the last call.
std::tuple<int64_t, int64_t> split_units_mode(int64_t mode) {
  TORCH_CHECK(mode >= 0 && mode <= 2, "fastrnn::_split_units: mode must be 0, 1 or 2, got ", mode);
  return {g_split_units_mode.exchange(mode), g_split_units_calls.exchange(0)};
}

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
  // Test and timing hooks: the step matmul alone, the switch between its two register kernels, and when layers
  // split the units between threads.
  m.def("_gated_step_mm(Tensor a, Tensor b, Tensor? init, int kernel) -> Tensor");
  m.def("_gated_zmm_kernel(bool enable) -> bool", &fastrnn::gated_zmm_kernel);
  m.def("_split_units(int mode) -> (int, int)", &fastrnn::split_units_mode);
}

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("rnn_fwd", &fastrnn::rnn_fwd_cpu);
  m.impl("rnn_bwd", &fastrnn::rnn_bwd_cpu);
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
