// chtorch native CPU kernel of the link-prediction wing: node-based Cannistraci-Hebb link prediction
// (CH-L3n) by sparse row products. Compiled by chtorch/sparse/native.py into one library with the
// sparse layer's kernels (one build, one cache entry); this file adds its operators to the same
// namespace as a fragment. Its pure-PyTorch twin is chtorch/linkpred/l3n.py, which the tests compare
// it against.
//
// Reference: Zhang et al., NeurIPS 2025, arXiv:2501.19107 (CH-L3n, Eq. 3 and App. K).

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

void check_index(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kLong && t.dim() == 1 && t.is_contiguous(), name,
              " must be a contiguous 1-D int64 CPU tensor");
}

int threads() { return std::max(1, at::get_num_threads()); }

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

TORCH_LIBRARY_FRAGMENT(chtorch_native, m) {
  m.def("ch_l3n(Tensor row_ptr, Tensor row_idx, Tensor col_ptr, Tensor col_idx, int variant, int counting) -> Tensor");
  m.def("ch_l3n_mask(Tensor mask, int variant, int counting) -> Tensor");
  m.def("neighbour_lists(Tensor mask) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(chtorch_native, CPU, m) {
  m.impl("ch_l3n", &ch_l3n);
  m.impl("ch_l3n_mask", &ch_l3n_mask);
  m.impl("neighbour_lists", &neighbour_lists);
}
