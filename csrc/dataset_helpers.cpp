// Index builders for the GPT and blended datasets (module megatron_core.data._dataset_helpers).
//
// Both loops walk tens of millions of entries for a large corpus; in C++ they take
// seconds. megatron_core/data/index_helpers.py holds numpy versions that must return
// identical arrays; tests/test_gpt_dataset.py and tests/test_blending.py compare them.

// Keep `w * s - c` as two rounded operations (no fused multiply-add), exactly as numpy
// and Python compute it, so that blending picks the same dataset on every platform.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

// Each row of sample_idx is where a sample starts: (position in doc_idx, token offset in
// that document). Row i+1 is where sample i ends, so sample i reads its
// seq_length + add_extra tokens from row i up to row i+1 (plus the extra token).
template <typename T>
void fill_sample_idx(T *rows, const int32_t *sizes, int64_t num_sizes, const int32_t *doc_idx,
                     int64_t num_doc_idx, int64_t num_samples, int32_t seq_length,
                     int32_t add_extra) {
  int64_t pos = 0;     // position in doc_idx
  int64_t offset = 0;  // token offset inside document doc_idx[pos]
  rows[0] = 0;
  rows[1] = 0;
  for (int64_t sample = 1; sample <= num_samples; ++sample) {
    int64_t needed = int64_t{seq_length} + add_extra;
    while (true) {
      const int32_t doc = doc_idx[pos];
      if (doc < 0 || doc >= num_sizes) {
        throw std::out_of_range("doc_idx holds document " + std::to_string(doc) +
                                " but sizes has only " + std::to_string(num_sizes) + " entries");
      }
      const int64_t available = int64_t{sizes[doc]} - offset;
      if (available >= needed) {
        // The sample ends inside this document; the next one starts add_extra tokens
        // before that end, so consecutive samples share their boundary token.
        offset += needed - add_extra;
        break;
      }
      needed -= available;
      if (pos == num_doc_idx - 1) {
        // Out of tokens: only reached for the partial last sample (drop_last=false).
        offset = int64_t{sizes[doc]} - add_extra;
        break;
      }
      ++pos;
      offset = 0;
    }
    rows[2 * sample] = static_cast<T>(pos);
    rows[2 * sample + 1] = static_cast<T>(offset);
  }
}

template <typename T>
py::array sample_idx_as(const int32_t *sizes, int64_t num_sizes, const int32_t *doc_idx,
                        int64_t num_doc_idx, int64_t num_samples, int32_t seq_length,
                        int32_t add_extra) {
  py::array_t<T> out({num_samples + 1, int64_t{2}});
  T *rows = out.mutable_data();
  {
    py::gil_scoped_release release;  // pure C++ loop; other Python threads may run
    fill_sample_idx<T>(rows, sizes, num_sizes, doc_idx, num_doc_idx, num_samples, seq_length,
                       add_extra);
  }
  return std::move(out);
}

py::array build_sample_idx(py::array_t<int32_t, py::array::c_style | py::array::forcecast> sizes,
                           py::array_t<int32_t, py::array::c_style | py::array::forcecast> doc_idx,
                           int32_t seq_length, int32_t num_epochs, int64_t tokens_per_epoch,
                           bool drop_last_partial, int32_t add_extra) {
  if (seq_length < 1) throw std::invalid_argument("seq_length must be at least 1");
  if (num_epochs < 1) throw std::invalid_argument("num_epochs must be at least 1");
  if (add_extra != 0 && add_extra != 1) throw std::invalid_argument("add_extra must be 0 or 1");
  if (doc_idx.size() == 0) throw std::invalid_argument("doc_idx is empty");
  const int64_t usable = int64_t{num_epochs} * tokens_per_epoch - add_extra;
  int64_t num_samples = 0;
  if (usable > 0) {
    num_samples = drop_last_partial ? usable / seq_length : (usable + seq_length - 1) / seq_length;
  }
  // Offsets are bounded by a document size (an int32); positions by len(doc_idx).
  if (doc_idx.size() < std::numeric_limits<int32_t>::max()) {
    return sample_idx_as<int32_t>(sizes.data(), sizes.size(), doc_idx.data(), doc_idx.size(),
                                  num_samples, seq_length, add_extra);
  }
  return sample_idx_as<int64_t>(sizes.data(), sizes.size(), doc_idx.data(), doc_idx.size(),
                                num_samples, seq_length, add_extra);
}

// Sample k goes to the dataset that is furthest behind its share: the largest
// weight * max(k, 1) - taken_so_far, the lowest dataset number on ties.
template <typename T>
py::tuple blending_impl(const double *weights, int64_t num_datasets, int64_t size) {
  py::array_t<T> dataset_index(size);
  py::array_t<int64_t> dataset_sample_index(size);
  T *which = dataset_index.mutable_data();
  int64_t *within = dataset_sample_index.mutable_data();
  std::vector<int64_t> taken(num_datasets, 0);
  {
    py::gil_scoped_release release;
    for (int64_t k = 0; k < size; ++k) {
      const double progress = static_cast<double>(std::max<int64_t>(k, 1));
      int64_t best = 0;
      double best_deficit = weights[0] * progress - static_cast<double>(taken[0]);
      for (int64_t j = 1; j < num_datasets; ++j) {
        const double deficit = weights[j] * progress - static_cast<double>(taken[j]);
        if (deficit > best_deficit) {
          best = j;
          best_deficit = deficit;
        }
      }
      which[k] = static_cast<T>(best);
      within[k] = taken[best]++;
    }
  }
  return py::make_tuple(dataset_index, dataset_sample_index);
}

py::tuple build_blending_indices(
    py::array_t<double, py::array::c_style | py::array::forcecast> weights, int64_t size) {
  const int64_t n = weights.size();
  if (n < 1) throw std::invalid_argument("weights is empty");
  if (n > std::numeric_limits<int16_t>::max()) throw std::invalid_argument("too many datasets");
  if (size < 0) throw std::invalid_argument("size must be non-negative");
  if (n <= 255) return blending_impl<uint8_t>(weights.data(), n, size);
  return blending_impl<int16_t>(weights.data(), n, size);
}

}  // namespace

PYBIND11_MODULE(_dataset_helpers, m) {
  m.doc() = "C++ builders of the GPT sample index and the blending index.";
  m.def("build_sample_idx", &build_sample_idx, py::arg("sizes"), py::arg("doc_idx"),
        py::arg("seq_length"), py::arg("num_epochs"), py::arg("tokens_per_epoch"),
        py::arg("drop_last_partial") = true, py::arg("add_extra") = 1,
        "sample_idx [num_samples + 1, 2] (int32, or int64 when positions overflow int32).");
  m.def("build_blending_indices", &build_blending_indices, py::arg("weights"), py::arg("size"),
        "(dataset_index uint8 or int16, dataset_sample_index int64), each of length size.");
}
