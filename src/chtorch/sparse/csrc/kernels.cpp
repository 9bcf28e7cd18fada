// chtorch native CPU kernels: sparse x dense products of a truly sparse linear layer and
// node-based Cannistraci-Hebb link prediction (CH-L3n). Built at first use by
// chtorch/sparse/native.py with torch.utils.cpp_extension; every kernel has a pure-PyTorch twin
// (chtorch/sparse/functional.py, chtorch/linkpred/l3n.py) that the tests compare it against.
//
// The kernels read operands in a feature-major panel layout (to_panels() makes them from a batch-major
// activation): the batch is cut into panels of 256 bytes of entries (64 floats, 32 doubles), and each
// panel is a contiguous (features, width) matrix, so that a link's work is a few vectors over the
// batch and one panel of a whole activation (features x 256 bytes) stays in L2 while every row of W
// reads it. A plain feature-major (features, batch) matrix, whose rows lie a power-of-two stride
// apart, makes the cache sets collide at large batches: the products ran 2-3x slower per flop at 4096
// tokens than at 1024. spmm writes its result batch-major, as the torch ops that follow expect.
// Threads: OpenMP with torch's thread count (torch bundles libgomp, and the loader reuses it, so
// torch.set_num_threads governs these loops as it does torch's own).
//
// Reference: Zhang et al., NeurIPS 2025, arXiv:2501.19107 (truly sparse training, §3; CH-L3n,
// Eq. 3 and App. K).

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <omp.h>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

void check_index(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kLong && t.dim() == 1 && t.is_contiguous(), name,
              " must be a contiguous 1-D int64 CPU tensor");
}

int threads() { return std::max(1, at::get_num_threads()); }

// 64 bytes of scalar_t as one value (GCC/Clang vector extension: one AVX-512 register, or two AVX
// halves), so that accumulators stay in registers whatever the auto-vectoriser decides.
template <typename scalar_t>
struct Vec {
  typedef scalar_t type __attribute__((vector_size(64)));
  static constexpr int64_t size = 64 / sizeof(scalar_t);
  static type load(const scalar_t* p) {
    type v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static void store(scalar_t* p, const type& v) { std::memcpy(p, &v, sizeof(v)); }
};

// dst[j * dst_stride + i] = src[i * src_stride + j] for an h x w block (h, w <= 8). A full 8 x 8
// float block is three rounds of AVX shuffles (unpack, shuffle, 128-bit permute) instead of 64
// scalar moves; everything else goes element by element.
template <typename scalar_t>
inline void transpose_block8(const scalar_t* src, int64_t src_stride, scalar_t* dst, int64_t dst_stride, int64_t h,
                             int64_t w) {
#if defined(__AVX__)
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (h == 8 && w == 8) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_stride);
      __m256 t[8], u[8];
      for (int i = 0; i < 4; ++i) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
      }
      for (int i = 0; i < 2; ++i) {
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
      for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(dst + i * dst_stride, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
        _mm256_storeu_ps(dst + (i + 4) * dst_stride, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
      }
      return;
    }
  }
#endif
  for (int64_t j = 0; j < w; ++j)
    for (int64_t i = 0; i < h; ++i) dst[j * dst_stride + i] = src[i * src_stride + j];
}

// acc[0:w] = b + sum_{k in row} values[perm ? perm[k] : k] * src[index[k] * stride + t0 : ... + w] for
// w <= 4 vectors (64 floats): the accumulators stay in registers, the tail is done one element at a time.
template <typename scalar_t>
inline void row_tile(const int64_t* index, const int64_t* perm, const scalar_t* values, const scalar_t* src, int64_t begin,
                     int64_t end, scalar_t b, int64_t t0, int64_t w, int64_t stride, scalar_t* acc) {
  using V = Vec<scalar_t>;
  constexpr int64_t L = V::size;
  if (w == 4 * L) {
    typename V::type a0 = {}, a1 = {}, a2 = {}, a3 = {};
    a0 += b, a1 += b, a2 += b, a3 += b;
    for (int64_t k = begin; k < end; ++k) {
      const scalar_t v = values[perm ? perm[k] : k];
      const scalar_t* s = src + index[k] * stride + t0;
      a0 += v * V::load(s);
      a1 += v * V::load(s + L);
      a2 += v * V::load(s + 2 * L);
      a3 += v * V::load(s + 3 * L);
    }
    V::store(acc, a0);
    V::store(acc + L, a1);
    V::store(acc + 2 * L, a2);
    V::store(acc + 3 * L, a3);
    return;
  }
  int64_t t = 0;
  for (; t + L <= w; t += L) {
    typename V::type a0 = {};
    a0 += b;
    for (int64_t k = begin; k < end; ++k) a0 += values[perm ? perm[k] : k] * V::load(src + index[k] * stride + t0 + t);
    V::store(acc + t, a0);
  }
  for (; t < w; ++t) {
    scalar_t a = b;
    for (int64_t k = begin; k < end; ++k) a += values[perm ? perm[k] : k] * src[index[k] * stride + t0 + t];
    acc[t] = a;
  }
}

constexpr int64_t kRowBlock = 16;  // rows per task: their (row, panel) results are transposed in L1

// Entries of one panel: 4 vectors (256 bytes), the width of row_tile's register tile.
template <typename scalar_t>
constexpr int64_t panel_width() {
  return 4 * Vec<scalar_t>::size;
}

// out (batch, n_rows) = (W @ src)ᵀ for a CSR W (crow, index; values read through perm when given) and
// src in the panel layout (n_panels, n_src, width). Tasks are (panel, block of kRowBlock rows) in
// panel-major order, so that the threads share the panel that L2 holds; each task's results go
// through an L1 tile into the batch-major output (a feature-major output would slow the dense torch
// ops downstream 5-30x).
template <typename scalar_t>
void spmm_panels(const int64_t* crow, const int64_t* index, const int64_t* perm, const scalar_t* values,
                 const scalar_t* src, const scalar_t* bias, scalar_t* out, int64_t n_rows, int64_t n_src,
                 int64_t n_panels, int64_t width, int64_t batch) {
  constexpr int64_t tile = panel_width<scalar_t>();
  const int64_t n_blocks = (n_rows + kRowBlock - 1) / kRowBlock, n_tasks = n_blocks * n_panels;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads()) if (n_tasks > 1 && n_rows * batch > 4096)
  for (int64_t task = 0; task < n_tasks; ++task) {
    const int64_t p = task / n_blocks, blk = task % n_blocks;
    const int64_t r0 = blk * kRowBlock, r1 = std::min(n_rows, r0 + kRowBlock);
    const int64_t t0 = p * width, w = std::min(width, batch - t0);
    const scalar_t* panel = src + p * n_src * width;
    alignas(64) scalar_t buf[kRowBlock][tile];
    for (int64_t r = r0; r < r1; ++r)
      row_tile(index, perm, values, panel, crow[r], crow[r + 1], bias ? bias[r] : scalar_t(0), 0, w, width, buf[r - r0]);
    const int64_t h = r1 - r0;  // out[t0 + t, r0 + i] = buf[i][t], by 8 x 8 blocks
    for (int64_t i = 0; i < h; i += 8)
      for (int64_t t = 0; t < w; t += 8)
        transpose_block8(&buf[i][t], tile, out + (t0 + t) * n_rows + r0 + i, n_rows, std::min<int64_t>(8, h - i),
                         std::min<int64_t>(8, w - t));
  }
}

// dst = src (rows, cols)ᵀ in the panel layout: panel p is src[p * width : (p + 1) * width]ᵀ, a
// (cols, width) matrix; the last panel's columns past `rows` are zero (sddmm sums whole panels).
// By 32 x 32 blocks, one L1-resident block per task.
template <typename scalar_t>
void panels_from_rows(const scalar_t* src, scalar_t* dst, int64_t rows, int64_t cols, int64_t width) {
  constexpr int64_t B = 32;
  const int64_t n_panels = (rows + width - 1) / width, rb = (width + B - 1) / B, cb = (cols + B - 1) / B;
  const int64_t pad = n_panels * width - rows;
  if (pad > 0) {  // zero the last panel's missing columns (cheap: at most width - 1 of them per feature)
    scalar_t* last = dst + (n_panels - 1) * cols * width;
    for (int64_t c = 0; c < cols; ++c) std::fill(last + c * width + (width - pad), last + (c + 1) * width, scalar_t(0));
  }
#pragma omp parallel for collapse(3) schedule(static) num_threads(threads()) if (rows * cols > 32768)
  for (int64_t p = 0; p < n_panels; ++p) {
    for (int64_t i = 0; i < rb; ++i) {
      for (int64_t j = 0; j < cb; ++j) {
        const int64_t w = std::min(width, rows - p * width);
        const int64_t r0 = i * B, r1 = std::min(w, r0 + B), c0 = j * B, c1 = std::min(cols, c0 + B);
        const scalar_t* s = src + p * width * cols;
        scalar_t* d = dst + p * cols * width;
        for (int64_t r = r0; r < r1; r += 8)
          for (int64_t c = c0; c < c1; c += 8)
            transpose_block8(s + r * cols + c, cols, d + c * width + r, width, std::min<int64_t>(8, r1 - r),
                             std::min<int64_t>(8, c1 - c));
      }
    }
  }
}

// Sum of a vector's lanes as a tree of shuffles (AVX-512), not a chain of L dependent scalar
// additions per link, which costs more than the link's products at batch 32.
template <typename scalar_t>
inline scalar_t hsum(typename Vec<scalar_t>::type v) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<scalar_t, float>) {
    __m512 x;
    std::memcpy(&x, &v, sizeof(x));
    return _mm512_reduce_add_ps(x);
  } else {
    __m512d x;
    std::memcpy(&x, &v, sizeof(x));
    return _mm512_reduce_add_pd(x);
  }
#else
  scalar_t sum = 0;
  for (int64_t j = 0; j < Vec<scalar_t>::size; ++j) sum += v[j];
  return sum;
#endif
}

// grad[k] (+)= sum_t a_row[t] * b[cols[k], t] over one panel's `width` entries, for the links
// [begin, end) of one row (the first panel assigns, the others add).
template <typename scalar_t>
inline void sddmm_row(const int64_t* cols, const scalar_t* a_row, const scalar_t* b_panel, scalar_t* grad, int64_t begin,
                      int64_t end, int64_t width, bool first) {
  using V = Vec<scalar_t>;
  constexpr int64_t L = V::size;
  for (int64_t k = begin; k < end; ++k) {
    const scalar_t* b_row = b_panel + cols[k] * width;
    typename V::type acc0 = {}, acc1 = {};
    int64_t t = 0;
    for (; t + 2 * L <= width; t += 2 * L) {
      acc0 += V::load(a_row + t) * V::load(b_row + t);
      acc1 += V::load(a_row + t + L) * V::load(b_row + t + L);
    }
    for (; t + L <= width; t += L) acc0 += V::load(a_row + t) * V::load(b_row + t);
    acc0 += acc1;
    scalar_t sum = hsum<scalar_t>(acc0);
    for (; t < width; ++t) sum += a_row[t] * b_row[t];
    grad[k] = first ? sum : grad[k] + sum;
  }
}

// grad[k] = sum_t a[rows(k), t] * b[cols[k], t]   (rows(k) from the CSR pointer crow), with a and b
// in the panel layout (n_panels, n, width). One panel (a batch of at most 64 floats): rows handed out
// in small chunks to whichever thread is free, which absorbs a late thread on a busy machine. More
// panels: each thread owns a contiguous range of rows holding an equal share of the links and sweeps
// the panels over them one at a time, so that b's panel stays in L2 while its rows read it, with no
// barrier between panels. A link's sum runs over the panels in order, whatever the thread count.
template <typename scalar_t>
void sddmm_panels(const int64_t* crow, const int64_t* cols, const scalar_t* a, const scalar_t* b, scalar_t* grad,
                  int64_t n_rows, int64_t n_cols, int64_t n_panels, int64_t width) {
  const int64_t nnz = crow[n_rows];
  if (n_panels == 1) {
#pragma omp parallel for schedule(dynamic, 16) num_threads(threads()) if (n_rows > 16)
    for (int64_t r = 0; r < n_rows; ++r) sddmm_row(cols, a + r * width, b, grad, crow[r], crow[r + 1], width, true);
    return;
  }
#pragma omp parallel num_threads(threads()) if (n_rows > 16 && nnz > 256)
  {
    const int64_t tid = omp_get_thread_num(), nt = omp_get_num_threads();
    auto share_start = [&](int64_t i) {  // first row of share i: the first whose links start at i/nt of them
      return i >= nt ? n_rows : std::lower_bound(crow, crow + n_rows, nnz * i / nt) - crow;
    };
    const int64_t r_begin = tid == 0 ? 0 : share_start(tid), r_end = share_start(tid + 1);
    for (int64_t p = 0; p < n_panels; ++p) {
      const scalar_t* a_panel = a + p * n_rows * width;
      const scalar_t* b_panel = b + p * n_cols * width;
      for (int64_t r = r_begin; r < r_end; ++r)
        sddmm_row(cols, a_panel + r * width, b_panel, grad, crow[r], crow[r + 1], width, p == 0);
    }
  }
}

// Checks that src is an operand in the panel layout (n_panels, features, width) of `batch` entries.
void check_panels(const at::Tensor& src, int64_t batch, const char* name) {
  TORCH_CHECK(src.dim() == 3 && src.is_contiguous() && src.device().is_cpu(), name,
              " must be a contiguous (n_panels, features, width) CPU tensor made by to_panels");
  const int64_t full = 256 / static_cast<int64_t>(src.element_size());
  const int64_t n_panels = src.size(0), width = src.size(2);
  TORCH_CHECK(batch >= 0 && (n_panels == 1 ? width == batch && batch <= full
                                           : width == full && (n_panels - 1) * width < batch && batch <= n_panels * width),
              name, " does not hold ", batch, " entries in panels of ", full);
}

// (batch, n_rows) = (W @ src)ᵀ: W (CSR crow/index, values gathered through perm when given), src the
// panel layout of a (batch, n_src) activation (to_panels)
at::Tensor spmm(const at::Tensor& crow, const at::Tensor& index, const c10::optional<at::Tensor>& perm,
                const at::Tensor& values, const at::Tensor& src, const c10::optional<at::Tensor>& bias, int64_t n_rows,
                int64_t batch) {
  check_index(crow, "crow");
  check_index(index, "index");
  TORCH_CHECK(crow.numel() == n_rows + 1, "crow must have n_rows + 1 entries");
  check_panels(src, batch, "src");
  TORCH_CHECK(values.is_contiguous() && values.scalar_type() == src.scalar_type(), "values must be contiguous, dtype of src");
  if (perm.has_value()) check_index(*perm, "perm");
  if (bias.has_value()) TORCH_CHECK(bias->is_contiguous() && bias->numel() == n_rows, "bias must have n_rows entries");
  auto out = at::empty({batch, n_rows}, src.options());
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "chtorch_spmm", [&] {
    spmm_panels<scalar_t>(crow.data_ptr<int64_t>(), index.data_ptr<int64_t>(),
                          perm.has_value() ? perm->data_ptr<int64_t>() : nullptr, values.data_ptr<scalar_t>(),
                          src.data_ptr<scalar_t>(), bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr,
                          out.data_ptr<scalar_t>(), n_rows, src.size(1), src.size(0), src.size(2), batch);
  });
  return out;
}

// The panel layout (n_panels, cols, width) of a contiguous batch-major (rows, cols) matrix: panels of
// 256 bytes of entries (one panel of width rows when rows is at most that; then it is the plain
// transpose), the last one zero-padded.
at::Tensor to_panels(const at::Tensor& src) {
  TORCH_CHECK(src.dim() == 2 && src.is_contiguous() && src.device().is_cpu(), "src must be a contiguous 2-D CPU tensor");
  const int64_t rows = src.size(0), cols = src.size(1), full = 256 / static_cast<int64_t>(src.element_size());
  const int64_t width = std::min(rows, full), n_panels = rows <= full ? 1 : (rows + full - 1) / full;
  auto dst = at::empty({n_panels, cols, width}, src.options());
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "chtorch_to_panels", [&] {
    TORCH_CHECK(full == panel_width<scalar_t>(), "panel width mismatch");
    if (width > 0) panels_from_rows<scalar_t>(src.data_ptr<scalar_t>(), dst.data_ptr<scalar_t>(), rows, cols, width);
  });
  return dst;
}

// (nnz,) values of (a_rows @ b_rowsᵀ) at the links (crow, cols), where a and b are the panel layouts
// (to_panels) of (batch, n_rows) and (batch, n_cols) activations of one batch
at::Tensor sddmm(const at::Tensor& crow, const at::Tensor& cols, const at::Tensor& a, const at::Tensor& b) {
  check_index(crow, "crow");
  check_index(cols, "cols");
  TORCH_CHECK(a.dim() == 3 && b.dim() == 3 && a.is_contiguous() && b.is_contiguous() && a.size(0) == b.size(0) &&
                  a.size(2) == b.size(2),
              "a and b must be contiguous (n_panels, n, width) panel layouts of one batch");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "a and b must have the same dtype");
  TORCH_CHECK(crow.numel() == a.size(1) + 1, "crow must have a.size(1) + 1 entries");
  auto grad = at::empty({cols.numel()}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "chtorch_sddmm", [&] {
    sddmm_panels<scalar_t>(crow.data_ptr<int64_t>(), cols.data_ptr<int64_t>(), a.data_ptr<scalar_t>(),
                           b.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), a.size(1), b.size(1), a.size(0), a.size(2));
  });
  return grad;
}

// --- CH-L3n ---------------------------------------------------------------------------------------

// Local-community factor f(C, d) of an intermediate node of degree d with C common neighbours
// (C >= 1): CH2 (1 + C)/(1 + E), CH3 1/(1 + E), CH3.1 (1 + C)/(1 + E)^(2 - 1/(1 + E)), with
// 1 + E = max(d - C, 1) (see chtorch/linkpred/l3n.py).
inline float factor(float common, float degree, int64_t variant) {
  const float one_plus_e = std::max(degree - common, 1.0f);
  if (variant == 1) return 1.0f / one_plus_e;
  if (variant == 0) return (1.0f + common) / one_plus_e;
  return (1.0f + common) / std::pow(one_plus_e, 2.0f - 1.0f / one_plus_e);
}

constexpr int64_t kBlock = 64;  // columns per block: 64 floats = 4 AVX-512 accumulators

// 16 floats as one value (GCC/Clang vector extension: one AVX-512 register, or two AVX/SSE pairs),
// so that an accumulator row stays in registers whatever the auto-vectoriser decides.
typedef float f16v __attribute__((vector_size(64)));

inline f16v load16(const float* p) {
  f16v v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// out[r, 0:w] = sum_{k in bag r} table[idx[k], 0:kBlock], for r < n_bags (table rows kBlock wide: the
// block stays in the core's L2 while all bags read it; the accumulators stay in registers).
inline void bag_block(const int64_t* ptr, const int64_t* idx, const float* table, int64_t n_bags, float* out,
                      int64_t out_stride, int64_t w) {
  static_assert(kBlock == 64, "bag_block unrolls four 16-float vectors");
  for (int64_t r = 0; r < n_bags; ++r) {
    f16v a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t k = ptr[r]; k < ptr[r + 1]; ++k) {
      const float* t = table + idx[k] * kBlock;
      a0 += load16(t);
      a1 += load16(t + 16);
      a2 += load16(t + 32);
      a3 += load16(t + 48);
    }
    float acc[kBlock];
    std::memcpy(acc, &a0, 64);
    std::memcpy(acc + 16, &a1, 64);
    std::memcpy(acc + 32, &a2, 64);
    std::memcpy(acc + 48, &a3, 64);
    std::memcpy(out + r * out_stride, acc, sizeof(float) * w);
  }
}

// One side of the bipartite layer: its nodes' neighbour lists (own) and the other side's (other).
struct Side {
  const int64_t* own_ptr;
  const int64_t* own_idx;
  const int64_t* other_ptr;
  const int64_t* other_idx;
  int64_t n, n_other;
  bool gustavson;  // count common neighbours by Gustavson's method (sparse) or by bag sums (vectorised)
};

// Per-thread scratch of one side's factor blocks.
struct Scratch {
  std::vector<float> factor;   // (n, kBlock)
  std::vector<float> table;    // (n_other, kBlock), bag mode
  std::vector<int32_t> count;  // (n,), Gustavson mode
  std::vector<int32_t> touched;
  explicit Scratch(const Side& side)
      : factor(side.n * kBlock), table(side.gustavson ? 0 : side.n_other * kBlock), count(side.gustavson ? side.n : 0) {
    touched.reserve(side.gustavson ? side.n : 0);
  }
};

// factor[u, j] = f(C[u, v0 + j], d(u)) for the nodes u != v0 + j of the side sharing a neighbour with
// v0 + j, 0 elsewhere (C = A·Aᵀ or Aᵀ·A, symmetric, so column v of C is row v).
void factor_block(const Side& side, int64_t v0, int64_t w, int64_t variant, Scratch& sc) {
  float* F = sc.factor.data();
  std::fill(sc.factor.begin(), sc.factor.end(), 0.0f);
  if (side.gustavson) {  // row v of C by a counter: sum over x in own(v) of other(x); cost sum of deg²
    for (int64_t j = 0; j < w; ++j) {
      const int64_t v = v0 + j;
      for (int64_t a = side.own_ptr[v]; a < side.own_ptr[v + 1]; ++a) {
        const int64_t x = side.own_idx[a];
        for (int64_t b = side.other_ptr[x]; b < side.other_ptr[x + 1]; ++b) {
          const int64_t u = side.other_idx[b];
          if (sc.count[u]++ == 0) sc.touched.push_back(static_cast<int32_t>(u));
        }
      }
      for (int32_t u : sc.touched) {
        if (u != v) F[u * kBlock + j] = factor(static_cast<float>(sc.count[u]), static_cast<float>(side.own_ptr[u + 1] - side.own_ptr[u]), variant);
        sc.count[u] = 0;
      }
      sc.touched.clear();
    }
    return;
  }
  // Bag mode: table = incidence of the block's nodes (other-side rows), then C[:, block] as bag sums.
  std::fill(sc.table.begin(), sc.table.end(), 0.0f);
  for (int64_t j = 0; j < w; ++j)
    for (int64_t a = side.own_ptr[v0 + j]; a < side.own_ptr[v0 + j + 1]; ++a) sc.table[side.own_idx[a] * kBlock + j] = 1.0f;
  bag_block(side.own_ptr, side.own_idx, sc.table.data(), side.n, F, kBlock, kBlock);
  for (int64_t u = 0; u < side.n; ++u) {
    const float degree = static_cast<float>(side.own_ptr[u + 1] - side.own_ptr[u]);
    float* row = F + u * kBlock;
    for (int64_t j = 0; j < w; ++j) row[j] = (row[j] > 0.0f && u != v0 + j) ? factor(row[j], degree, variant) : 0.0f;
  }
}

// Gustavson's counting costs sum_x deg(x)² scalar updates (x over the other side), the bag sums
// nnz·n/16 vector additions plus the n·n_other table fills; pick the cheaper (constant measured
// roughly on an AMD EPYC: Gustavson wins below ~5% density on 1024..4096-wide layers).
bool prefer_gustavson(const int64_t* other_ptr, int64_t n_other, int64_t n) {
  double sum_sq = 0, nnz = 0;
  for (int64_t x = 0; x < n_other; ++x) {
    const double d = static_cast<double>(other_ptr[x + 1] - other_ptr[x]);
    sum_sq += d * d;
    nnz += d;
  }
  return sum_sq * 4.0 < nnz * static_cast<double>(n) + static_cast<double>(n) * static_cast<double>(n_other) / 4.0;
}

// S = A·F_iᵀ + F_o·A, 0 at the links (chtorch/linkpred/l3n.py has the formula and the PyTorch twin).
// row_ptr/row_idx: for each output p its inputs N(p) (increasing); col_ptr/col_idx: for each input c
// its outputs N(c). Works by blocks of kBlock columns (inputs term) and rows (outputs term) with
// per-thread buffers, so besides the scores only O(threads · n · kBlock) memory is used.
// counting: 0 picks per side (prefer_gustavson), 1 forces Gustavson's counting, 2 the bag sums (tests).
at::Tensor ch_l3n(const at::Tensor& row_ptr, const at::Tensor& row_idx, const at::Tensor& col_ptr,
                  const at::Tensor& col_idx, int64_t variant, int64_t counting) {
  check_index(row_ptr, "row_ptr");
  check_index(row_idx, "row_idx");
  check_index(col_ptr, "col_ptr");
  check_index(col_idx, "col_idx");
  TORCH_CHECK(variant >= 0 && variant <= 2, "variant code must be 0 (CH2), 1 (CH3) or 2 (CH3.1)");
  TORCH_CHECK(counting >= 0 && counting <= 2, "counting must be 0 (auto), 1 (Gustavson) or 2 (bag sums)");
  const int64_t n_out = row_ptr.numel() - 1, n_in = col_ptr.numel() - 1;
  const int64_t* rp = row_ptr.data_ptr<int64_t>();
  const int64_t* ri = row_idx.data_ptr<int64_t>();
  const int64_t* cp = col_ptr.data_ptr<int64_t>();
  const int64_t* ci = col_idx.data_ptr<int64_t>();
  // inputs side: F_iᵀ[b, c] = f(C_i[b, c], d(b)); outputs side: F_oᵀ[q, p] = F_o[p, q] = f(C_o[p, q], d(q))
  const bool g_in = counting == 0 ? prefer_gustavson(rp, n_out, n_in) : counting == 1;
  const bool g_out = counting == 0 ? prefer_gustavson(cp, n_in, n_out) : counting == 1;
  const Side inputs{cp, ci, rp, ri, n_in, n_out, g_in};
  const Side outputs{rp, ri, cp, ci, n_out, n_in, g_out};
  auto scores = at::empty({n_out, n_in}, at::TensorOptions().dtype(at::kFloat));
  float* s = scores.data_ptr<float>();
  const int64_t in_blocks = (n_in + kBlock - 1) / kBlock, out_blocks = (n_out + kBlock - 1) / kBlock;
#pragma omp parallel num_threads(threads())
  {
    {
      // A·F_iᵀ by column blocks of S: S[p, c0 + j] = sum_{b in N(p)} F_iᵀ[b, c0 + j]
      Scratch sc(inputs);
#pragma omp for schedule(dynamic, 1)
      for (int64_t blk = 0; blk < in_blocks; ++blk) {
        const int64_t c0 = blk * kBlock, w = std::min(kBlock, n_in - c0);
        factor_block(inputs, c0, w, variant, sc);
        bag_block(rp, ri, sc.factor.data(), n_out, s + c0, n_in, w);
      }
    }  // implicit barrier: S holds the inputs term everywhere
    {
      // F_o·A by row blocks of S: T[c, j] = sum_{q in N(c)} F_oᵀ[q, p0 + j], then S[p0 + j, c] += T[c, j]
      Scratch sc(outputs);
      std::vector<float> t_block(static_cast<size_t>(n_in) * kBlock);
#pragma omp for schedule(dynamic, 1)
      for (int64_t blk = 0; blk < out_blocks; ++blk) {
        const int64_t p0 = blk * kBlock, w = std::min(kBlock, n_out - p0);
        factor_block(outputs, p0, w, variant, sc);
        bag_block(cp, ci, sc.factor.data(), n_in, t_block.data(), kBlock, kBlock);
        // transposed add through an L1 tile: contiguous reads of T, contiguous read-modify-writes of S
        for (int64_t c0 = 0; c0 < n_in; c0 += 16) {
          const int64_t cw = std::min<int64_t>(16, n_in - c0);
          float tile[kBlock][16];
          for (int64_t c = 0; c < cw; ++c) {
            const float* t_row = t_block.data() + (c0 + c) * kBlock;
            for (int64_t j = 0; j < kBlock; ++j) tile[j][c] = t_row[j];
          }
          for (int64_t j = 0; j < w; ++j) {
            float* s_row = s + (p0 + j) * n_in + c0;
#pragma omp simd
            for (int64_t c = 0; c < cw; ++c) s_row[c] += tile[j][c];
          }
        }
        for (int64_t p = p0; p < p0 + w; ++p)
          for (int64_t j = rp[p]; j < rp[p + 1]; ++j) s[p * n_in + ri[j]] = 0.0f;
      }
    }
  }
  return scores;
}

// Neighbour lists of both sides of a (n_out, n_in) bool mask, in CSR form: row_ptr/row_idx (each
// output's inputs, increasing) and col_ptr/col_idx (each input's outputs, increasing). One pass
// over the mask, eight bytes at a time (a sparse mask is mostly zero words), rows in parallel; the
// column lists by a counting sort of the row lists. Replaces a nonzero + sort + bincount preamble
// in PyTorch that took a third of a 2%-density CH-L3n evaluation.
std::vector<at::Tensor> neighbour_lists(const at::Tensor& mask) {
  TORCH_CHECK(mask.dim() == 2 && mask.scalar_type() == at::kBool && mask.is_contiguous() && mask.device().is_cpu(),
              "mask must be a contiguous 2-D bool CPU tensor");
  const int64_t n_out = mask.size(0), n_in = mask.size(1);
  const uint8_t* m = reinterpret_cast<const uint8_t*>(mask.data_ptr<bool>());
  auto index_options = at::TensorOptions().dtype(at::kLong);
  auto row_ptr = at::empty({n_out + 1}, index_options);
  int64_t* rp = row_ptr.data_ptr<int64_t>();
  auto for_each_link = [&](int64_t r, auto&& visit) {
    const uint8_t* row = m + r * n_in;
    int64_t c = 0;
    for (; c + 8 <= n_in; c += 8) {
      uint64_t word;
      std::memcpy(&word, row + c, 8);
      if (word == 0) continue;
      for (int64_t j = 0; j < 8; ++j)
        if (row[c + j]) visit(c + j);
    }
    for (; c < n_in; ++c)
      if (row[c]) visit(c);
  };
  rp[0] = 0;
#pragma omp parallel for schedule(static) num_threads(threads()) if (n_out * n_in > (1 << 18))
  for (int64_t r = 0; r < n_out; ++r) {
    int64_t count = 0;
    for_each_link(r, [&](int64_t) { ++count; });
    rp[r + 1] = count;
  }
  for (int64_t r = 0; r < n_out; ++r) rp[r + 1] += rp[r];
  const int64_t nnz = rp[n_out];
  auto row_idx = at::empty({nnz}, index_options);
  int64_t* ri = row_idx.data_ptr<int64_t>();
#pragma omp parallel for schedule(static) num_threads(threads()) if (n_out * n_in > (1 << 18))
  for (int64_t r = 0; r < n_out; ++r) {
    int64_t k = rp[r];
    for_each_link(r, [&](int64_t c) { ri[k++] = c; });
  }
  auto col_ptr = at::zeros({n_in + 1}, index_options);
  auto col_idx = at::empty({nnz}, index_options);
  int64_t* cp = col_ptr.data_ptr<int64_t>();
  int64_t* ci = col_idx.data_ptr<int64_t>();
  for (int64_t k = 0; k < nnz; ++k) ++cp[ri[k] + 1];
  for (int64_t c = 0; c < n_in; ++c) cp[c + 1] += cp[c];
  std::vector<int64_t> next(cp, cp + n_in);
  for (int64_t r = 0; r < n_out; ++r)  // rows in increasing order: each column's list is increasing
    for (int64_t k = rp[r]; k < rp[r + 1]; ++k) ci[next[ri[k]]++] = r;
  return {row_ptr, row_idx, col_ptr, col_idx};
}

// CH-L3n of a bool mask: its neighbour lists, then ch_l3n.
at::Tensor ch_l3n_mask(const at::Tensor& mask, int64_t variant, int64_t counting) {
  const auto lists = neighbour_lists(mask);
  return ch_l3n(lists[0], lists[1], lists[2], lists[3], variant, counting);
}

}  // namespace

TORCH_LIBRARY(chtorch_native, m) {
  m.def("spmm(Tensor crow, Tensor index, Tensor? perm, Tensor values, Tensor src, Tensor? bias, int n_rows, int batch) -> Tensor");
  m.def("to_panels(Tensor src) -> Tensor");
  m.def("sddmm(Tensor crow, Tensor cols, Tensor a, Tensor b) -> Tensor");
  m.def("ch_l3n(Tensor row_ptr, Tensor row_idx, Tensor col_ptr, Tensor col_idx, int variant, int counting) -> Tensor");
  m.def("ch_l3n_mask(Tensor mask, int variant, int counting) -> Tensor");
  m.def("neighbour_lists(Tensor mask) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(chtorch_native, CPU, m) {
  m.impl("spmm", &spmm);
  m.impl("to_panels", &to_panels);
  m.impl("sddmm", &sddmm);
  m.impl("ch_l3n", &ch_l3n);
  m.impl("ch_l3n_mask", &ch_l3n_mask);
  m.impl("neighbour_lists", &neighbour_lists);
}
