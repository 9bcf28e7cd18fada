// chtorch native CPU kernels of the sparse wing: sparse x dense products of a truly sparse linear layer.
// Built at first use by chtorch/sparse/native.py with torch.utils.cpp_extension, in one library with
// the link predictor's kernels (chtorch/linkpred/csrc/ch_l3n.cpp, a fragment of the same operator
// namespace); every kernel has a pure-PyTorch twin (chtorch/sparse/functional.py) that the tests
// compare it against.
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
// Reference: Zhang et al., NeurIPS 2025, arXiv:2501.19107 (truly sparse training, §3).

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

}  // namespace

TORCH_LIBRARY(chtorch_native, m) {
  m.def("spmm(Tensor crow, Tensor index, Tensor? perm, Tensor values, Tensor src, Tensor? bias, int n_rows, int batch) -> Tensor");
  m.def("to_panels(Tensor src) -> Tensor");
  m.def("sddmm(Tensor crow, Tensor cols, Tensor a, Tensor b) -> Tensor");
}

TORCH_LIBRARY_IMPL(chtorch_native, CPU, m) {
  m.impl("spmm", &spmm);
  m.impl("to_panels", &to_panels);
  m.impl("sddmm", &sddmm);
}
