// neo._core: the thin pybind11 layer over the C++ core. Argument checks name the argument; the
// algorithms live in csrc/src. Heavy calls release the GIL; numpy arrays cross without copies.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "neo/decode_state.h"
#include "neo/trie.h"

namespace py = pybind11;
using neo::BatchDecodeState;
using neo::SidIndex;

namespace {

[[noreturn]] void type_error(const std::string& msg) { throw py::type_error(msg); }
[[noreturn]] void value_error(const std::string& msg) { throw py::value_error(msg); }

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

constexpr int kAligned = py::detail::npy_api::NPY_ARRAY_ALIGNED_;
constexpr int kWriteable = py::detail::npy_api::NPY_ARRAY_WRITEABLE_;

bool is_aligned(const py::array& a) { return (a.flags() & kAligned) != 0; }

// `a` as a C-contiguous, aligned, native-endian array of T (a view when it already is one, else a
// converted copy), so the core can read it as a plain T[]; names `what` on failure.
template <class T>
py::array_t<T> c_aligned(const py::array& a, const char* what) {
  auto out = py::reinterpret_steal<py::array_t<T>>(py::detail::npy_api::get().PyArray_FromAny_(
      a.ptr(), py::dtype::of<T>().release().ptr(), 0, 0,
      py::detail::npy_api::NPY_ARRAY_ENSUREARRAY_ | py::array::c_style | py::array::forcecast | kAligned, nullptr));
  if (!out) {
    PyErr_Clear();
    type_error(std::string(what) + " could not be converted to " + std::string(py::str(py::dtype::of<T>())));
  }
  return out;
}

// A C-contiguous, aligned int64 copy/view of an integer array-like of the given ndim; names `what`
// on error. Floats, booleans and objects are refused (a token id of 2.5 or True is a bug upstream).
py::array_t<int64_t> as_int64(const py::handle& obj, const char* what, int ndim) {
  py::array a = py::array::ensure(obj);
  if (!a) {
    PyErr_Clear();
    type_error(std::string(what) + " must be an integer array, got " + std::string(py::str(py::type::of(obj))));
  }
  const char kind = a.dtype().kind();
  if (kind != 'i' && kind != 'u')
    type_error(std::string(what) + " must have an integer dtype, got " + std::string(py::str(a.dtype())));
  if (ndim >= 0 && a.ndim() != ndim)
    value_error(std::string(what) + " must be " + std::to_string(ndim) + "-D, got shape " + shape_str(a));
  if (kind == 'u' && a.dtype().itemsize() == 8) {
    // uint64 values above int64 max would wrap: reject them explicitly.
    auto u = c_aligned<uint64_t>(a, what);
    const uint64_t* p = u.data();
    for (py::ssize_t i = 0; i < u.size(); ++i)
      if (p[i] > uint64_t(INT64_MAX)) value_error(std::string(what) + " has a value beyond int64");
  }
  return c_aligned<int64_t>(a, what);
}

py::array_t<int32_t> as_int32_checked(const py::handle& obj, const char* what, int ndim) {
  if (py::isinstance<py::array_t<int32_t>>(obj)) {  // native int32 already: no copy, no range check needed
    auto a = py::reinterpret_borrow<py::array>(obj);
    if ((a.flags() & py::array::c_style) && is_aligned(a) && (ndim < 0 || a.ndim() == ndim))
      return py::reinterpret_borrow<py::array_t<int32_t>>(obj);
  }
  auto a64 = as_int64(obj, what, ndim);
  const int64_t* p = a64.data();
  for (py::ssize_t i = 0; i < a64.size(); ++i)
    if (p[i] < INT32_MIN || p[i] > INT32_MAX) value_error(std::string(what) + " value " + std::to_string(p[i]) + " does not fit int32");
  std::vector<py::ssize_t> shape(a64.shape(), a64.shape() + a64.ndim());
  py::array_t<int32_t> out(shape);
  int32_t* q = out.mutable_data();
  for (py::ssize_t i = 0; i < a64.size(); ++i) q[i] = static_cast<int32_t>(p[i]);
  return out;
}

// A file path for the core: NUL bytes would silently cut it short in open().
std::string checked_path(const std::string& path) {
  if (path.find('\0') != std::string::npos) value_error("index path contains a NUL byte");
  if (path.empty()) value_error("index path is empty");
  return path;
}

neo::OutputFormat parse_format(const std::string& f) {
  if (f == "mixed") return neo::OutputFormat::kMixed;
  if (f == "ids") return neo::OutputFormat::kIds;
  if (f == "text") return neo::OutputFormat::kText;
  value_error("format must be 'mixed', 'ids' or 'text', got '" + f + "'");
}

template <class T>
py::array view_of(const neo::ArrayView<T>& v, py::handle owner) {
  // Read-only zero-copy view; `owner` (the index) keeps the memory alive.
  py::array a(py::dtype::of<T>(), {static_cast<py::ssize_t>(v.size())}, {static_cast<py::ssize_t>(sizeof(T))}, v.ptr, owner);
  py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return a;
}

void check_type(const SidIndex& idx, int64_t t) {
  if (t < 0 || t >= idx.num_types())
    throw py::index_error("type " + std::to_string(t) + " out of range [0, " + std::to_string(idx.num_types()) + ")");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "neo C++ core: SID prefix trie (SidIndex) and batched constrained-decoding state (DecodeState).";
  m.attr("__version__") = "0.1.0";
  m.attr("INDEX_FORMAT_VERSION") = 1;

  static py::exception<neo::FormatError> format_error(m, "IndexFormatError", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const neo::FormatError& e) {
      py::set_error(format_error, e.what());
    } catch (const neo::InvalidArgument& e) {
      py::set_error(PyExc_ValueError, e.what());
    }
  });

  py::class_<SidIndex, std::shared_ptr<SidIndex>>(m, "SidIndex")
      .def_static(
          "build",
          [](int32_t vocab_size, int32_t open_id, int32_t close_id, const std::vector<std::vector<int32_t>>& band_starts,
             const std::vector<std::vector<int32_t>>& band_sizes, const py::list& tokens, const py::list& item_rows) {
            neo::LayoutSpec lay;
            lay.vocab_size = vocab_size;
            lay.open_id = open_id;
            lay.close_id = close_id;
            if (band_starts.size() != band_sizes.size()) value_error("band_starts and band_sizes must have one entry per type");
            for (size_t t = 0; t < band_starts.size(); ++t) lay.types.push_back({band_starts[t], band_sizes[t]});
            if (py::len(tokens) != band_starts.size() || py::len(item_rows) != band_starts.size())
              value_error("tokens and item_rows need one array per type (" + std::to_string(band_starts.size()) + ")");
            std::vector<py::array_t<int32_t>> keep;
            std::vector<neo::TypeInput> inputs;
            for (size_t t = 0; t < band_starts.size(); ++t) {
              std::string name = "tokens[" + std::to_string(t) + "]";
              auto tok = as_int32_checked(tokens[t], name.c_str(), 2);
              std::string rname = "item_rows[" + std::to_string(t) + "]";
              auto rows = as_int32_checked(item_rows[t], rname.c_str(), 1);
              if (tok.shape(1) > INT32_MAX) value_error(name + " has too many columns");
              if (rows.shape(0) != tok.shape(0))
                value_error(rname + " has " + std::to_string(rows.shape(0)) + " entries but " + name + " has " + std::to_string(tok.shape(0)) + " rows");
              neo::TypeInput in;
              in.tokens = tok.data();
              in.num_items = tok.shape(0);
              in.levels = static_cast<int32_t>(tok.shape(1));
              in.item_rows = rows.data();
              inputs.push_back(in);
              keep.push_back(tok);
              keep.push_back(rows);
            }
            py::gil_scoped_release nogil;
            return SidIndex::build(lay, inputs);
          },
          py::arg("vocab_size"), py::arg("open_id"), py::arg("close_id"), py::arg("band_starts"), py::arg("band_sizes"),
          py::arg("tokens"), py::arg("item_rows"))
      .def_static(
          "load",
          [](const std::string& path, bool mmap) {
            const std::string p = checked_path(path);
            py::gil_scoped_release nogil;
            return std::shared_ptr<SidIndex>(SidIndex::load(p, mmap));
          },
          py::arg("path"), py::arg("mmap") = false)
      .def(
          "save",
          [](const SidIndex& self, const std::string& path) {
            const std::string p = checked_path(path);
            py::gil_scoped_release nogil;
            self.save(p);
          },
          py::arg("path"))
      .def_property_readonly("num_types", &SidIndex::num_types)
      .def_property_readonly("num_items", &SidIndex::num_items)
      .def_property_readonly("memory_bytes", &SidIndex::memory_bytes)
      .def_property_readonly("vocab_size", [](const SidIndex& s) { return s.layout().vocab_size; })
      .def_property_readonly("open_id", [](const SidIndex& s) { return s.layout().open_id; })
      .def_property_readonly("close_id", [](const SidIndex& s) { return s.layout().close_id; })
      .def("levels", [](const SidIndex& s, int64_t t) { check_type(s, t); return s.type(int32_t(t)).levels; }, py::arg("type"))
      .def("band_starts", [](const SidIndex& s, int64_t t) { check_type(s, t); return s.type(int32_t(t)).band_start; }, py::arg("type"))
      .def("band_sizes", [](const SidIndex& s, int64_t t) { check_type(s, t); return s.type(int32_t(t)).band_size; }, py::arg("type"))
      .def("num_type_items", [](const SidIndex& s, int64_t t) { check_type(s, t); return s.type(int32_t(t)).num_leaves(); }, py::arg("type"))
      .def(
          "arrays",
          [](py::object self_obj, int64_t t) {
            const SidIndex& s = self_obj.cast<const SidIndex&>();
            check_type(s, t);
            const neo::TypeTrie& tt = s.type(int32_t(t));
            py::dict d;
            d["depth_begin"] = py::array_t<int64_t>(tt.depth_begin.size(), tt.depth_begin.data());
            d["child_begin"] = view_of(tt.child_begin, self_obj);
            d["code"] = view_of(tt.code, self_obj);
            d["leaf_item"] = view_of(tt.leaf_item, self_obj);
            d["band_start"] = py::array_t<int32_t>(tt.band_start.size(), tt.band_start.data());
            d["band_size"] = py::array_t<int32_t>(tt.band_size.size(), tt.band_size.data());
            return d;
          },
          py::arg("type"), "Zero-copy read-only views of one type's trie arrays (see csrc/README.md).")
      .def(
          "children",
          [](const SidIndex& s, int64_t t, int64_t node) {
            check_type(s, t);
            const neo::TypeTrie& tt = s.type(int32_t(t));
            if (node < 0 || node >= tt.num_internal())
              throw py::index_error("node " + std::to_string(node) + " is not an internal node of type " + std::to_string(t));
            int32_t depth = 0;
            while (tt.depth_begin[depth + 1] <= node) ++depth;
            const int64_t b = tt.child_begin[node], e = tt.child_begin[node + 1];
            py::array_t<int32_t> out(e - b);
            for (int64_t c = b; c < e; ++c) out.mutable_data()[c - b] = tt.band_start[depth] + tt.code[c];
            return out;
          },
          py::arg("type"), py::arg("node"), "Token ids of the children of an internal node, ascending.")
      .def(
          "lookup",
          [](const SidIndex& s, const py::handle& tokens, int64_t t) {
            auto tok = as_int32_checked(tokens, "tokens", 2);
            if (t != -1) check_type(s, t);
            const int64_t n = tok.shape(0), L = tok.shape(1);
            if (L > INT32_MAX) value_error("tokens has too many columns");
            py::array_t<int32_t> out(n);
            const int32_t* p = tok.data();
            int32_t* q = out.mutable_data();
            {
              py::gil_scoped_release nogil;
              for (int64_t i = 0; i < n; ++i) {
                const int32_t ti = t >= 0 ? int32_t(t) : (L > 0 ? s.type_of_first_token(p[i * L]) : -1);
                q[i] = int32_t(s.lookup(ti, p + i * L, int32_t(L)));
              }
            }
            return out;
          },
          py::arg("tokens"), py::arg("type") = -1,
          "Item rows of full SIDs int[M, L] (-1 where no item); type -1 infers it from the first token.")
      .def(
          "item_tokens",
          [](const SidIndex& s, const py::handle& items) {
            auto it = as_int64(items, "item_rows", 1);
            int32_t max_l = 0;
            for (int32_t t = 0; t < s.num_types(); ++t) max_l = std::max(max_l, s.type(t).levels);
            const int64_t n = it.shape(0);
            py::array_t<int32_t> types(n);
            py::array_t<int32_t> toks({n, int64_t(max_l)});
            std::fill(toks.mutable_data(), toks.mutable_data() + n * max_l, -1);
            for (int64_t i = 0; i < n; ++i) {
              const int64_t leaf = s.leaf_of_item(it.data()[i]);
              if (leaf < 0) value_error("item_rows[" + std::to_string(i) + "] = " + std::to_string(it.data()[i]) + " is not in the index");
              types.mutable_data()[i] = s.type_of_global_leaf(leaf);
              s.leaf_tokens(leaf, toks.mutable_data() + i * max_l);
            }
            return py::make_tuple(types, toks);
          },
          py::arg("item_rows"), "(types int32[M], tokens int32[M, max L] padded with -1) of the given items.")
      .def("level_stats", [](const SidIndex& s) {
        py::list out;
        for (const auto& st : s.level_stats()) {
          py::dict d;
          d["type"] = st.type;
          d["depth"] = st.depth;
          d["nodes"] = st.nodes;
          d["mean_children"] = st.mean_children;
          d["max_children"] = st.max_children;
          out.append(d);
        }
        return out;
      });

  py::class_<BatchDecodeState>(m, "DecodeState")
      .def(py::init([](std::shared_ptr<SidIndex> index, int64_t num_rows, const py::handle& eos, const py::handle& seps, int num_threads) {
             auto e = as_int32_checked(eos, "eos_token_ids", 1);
             auto sp = as_int32_checked(seps, "separator_token_ids", 1);
             if (num_threads < 0) value_error("num_threads must be >= 0 (0 = all cores)");
             return new BatchDecodeState(index, num_rows, std::vector<int32_t>(e.data(), e.data() + e.size()),
                                         std::vector<int32_t>(sp.data(), sp.data() + sp.size()), num_threads);
           }),
           py::arg("index"), py::arg("num_rows"), py::arg("eos_token_ids"), py::arg("separator_token_ids"), py::arg("num_threads") = 0)
      .def_property_readonly("num_rows", &BatchDecodeState::num_rows)
      .def_property_readonly("mask_words", &BatchDecodeState::mask_words)
      .def(
          "set_row_options",
          [](BatchDecodeState& s, int64_t row, const std::string& format, py::object allowed_types, py::object exclude,
             py::object allow, bool exclude_emitted, int64_t max_items) {
            neo::RowOptions o;
            o.format = parse_format(format);
            if (!allowed_types.is_none()) {
              o.allowed_types = 0;
              auto at = as_int64(allowed_types, "allowed_types", 1);
              for (py::ssize_t i = 0; i < at.size(); ++i) {
                int64_t t = at.data()[i];
                if (t < 0 || t >= s.index().num_types())
                  value_error("allowed_types: type " + std::to_string(t) + " out of range [0, " + std::to_string(s.index().num_types()) + ")");
                o.allowed_types |= uint64_t{1} << t;
              }
            }
            if (!exclude.is_none()) {
              auto ex = as_int64(exclude, "exclude", 1);
              o.exclude.assign(ex.data(), ex.data() + ex.size());
            }
            if (!allow.is_none()) {
              auto al = as_int64(allow, "allow", 1);
              o.has_allow = true;
              o.allow.assign(al.data(), al.data() + al.size());
            }
            o.exclude_emitted = exclude_emitted;
            if (max_items < -1 || max_items > INT32_MAX) value_error("max_items must be -1 (no limit) or >= 0");
            o.max_items = int32_t(max_items);
            s.set_row_options(row, o);
          },
          py::arg("row"), py::arg("format") = "mixed", py::arg("allowed_types") = py::none(), py::arg("exclude") = py::none(),
          py::arg("allow") = py::none(), py::arg("exclude_emitted") = true, py::arg("max_items") = -1)
      .def(
          "fill_next_token_bitmask",
          [](BatchDecodeState& s, py::array bitmask, py::object indices, bool incremental) {
            // Every property the core relies on is checked here, so it never writes outside the
            // words this array view owns: dtype (native int32), 2-D, width, writeable, aligned,
            // words contiguous within a row, rows not overlapping (any row pitch, either sign).
            if (!py::isinstance<py::array_t<int32_t>>(bitmask))
              type_error("bitmask must be a native-endian int32 array, got dtype " + std::string(py::str(bitmask.dtype())));
            if (bitmask.ndim() != 2) value_error("bitmask must be 2-D (rows, words), got shape " + shape_str(bitmask));
            const int64_t rows = bitmask.shape(0), width = bitmask.shape(1);
            if (width < s.mask_words())
              value_error("bitmask has " + std::to_string(width) + " words per row; the vocabulary of " +
                          std::to_string(s.index().layout().vocab_size) + " tokens needs " + std::to_string(s.mask_words()) +
                          " (allocate shape (rows, " + std::to_string(s.mask_words()) + "))");
            if (width > INT32_MAX) value_error("bitmask is too wide (" + std::to_string(width) + " words per row)");
            if (!(bitmask.flags() & kWriteable)) value_error("bitmask must be writable (got a read-only array)");
            int64_t pitch = width;  // in int32 words
            if (rows > 0) {
              if (!is_aligned(bitmask)) value_error("bitmask data is not aligned to 4 bytes");
              if (width > 1 && bitmask.strides(1) != 4)
                value_error("bitmask words must be contiguous within a row (column stride " + std::to_string(bitmask.strides(1)) +
                            " bytes, expected 4); pass a C-contiguous array or a slice of contiguous columns");
              if (rows > 1) {
                const int64_t st = bitmask.strides(0);
                if (st % 4 != 0 || (st < 0 ? -st : st) < 4 * width)
                  value_error("bitmask rows overlap or are misaligned (row stride " + std::to_string(st) + " bytes for " +
                              std::to_string(width) + " words per row)");
                pitch = st / 4;
              }
            }
            py::array_t<int64_t> idx;
            const int64_t* ip = nullptr;
            int64_t n = 0;
            if (!indices.is_none()) {
              idx = as_int64(indices, "indices", 1);
              ip = idx.data();
              n = idx.size();
            }
            int32_t* data = rows > 0 ? static_cast<int32_t*>(bitmask.mutable_data()) : nullptr;
            py::gil_scoped_release nogil;
            // Writes exactly `width` words of each row; the rest of a longer pitch is the caller's.
            s.fill_bitmask(data, rows, width, pitch, ip, n, incremental);
          },
          py::arg("bitmask"), py::arg("indices") = py::none(), py::arg("incremental") = false)
      .def(
          "advance",
          [](BatchDecodeState& s, const py::handle& tokens, py::object indices) {
            auto tok = as_int64(tokens, "tokens", 1);
            py::array_t<int64_t> idx;
            const int64_t* ip = nullptr;
            if (!indices.is_none()) {
              idx = as_int64(indices, "indices", 1);
              if (idx.size() != tok.size())
                value_error("indices has " + std::to_string(idx.size()) + " entries but tokens has " + std::to_string(tok.size()));
              ip = idx.data();
            }
            py::array_t<int32_t> completed(tok.size());
            {
              py::gil_scoped_release nogil;
              s.advance(tok.data(), ip, tok.size(), completed.mutable_data());
            }
            return completed;
          },
          py::arg("tokens"), py::arg("indices") = py::none())
      .def(
          "reorder",
          [](BatchDecodeState& s, const py::handle& src) {
            auto a = as_int64(src, "src", 1);
            s.reorder(a.data(), a.size());
          },
          py::arg("src"))
      .def(
          "reset",
          [](BatchDecodeState& s, py::object rows) {
            if (rows.is_none()) return s.reset(nullptr, 0);
            auto a = as_int64(rows, "rows", 1);
            s.reset(a.data(), a.size());
          },
          py::arg("rows") = py::none())
      .def_property_readonly("status",
                             [](const BatchDecodeState& s) {
                               py::array_t<int8_t> out(s.num_rows());
                               for (int64_t r = 0; r < s.num_rows(); ++r) out.mutable_data()[r] = int8_t(s.row(r).status);
                               return out;
                             })
      .def_property_readonly("depth",
                             [](const BatchDecodeState& s) {
                               py::array_t<int32_t> out(s.num_rows());
                               for (int64_t r = 0; r < s.num_rows(); ++r) out.mutable_data()[r] = s.row(r).depth;
                               return out;
                             })
      .def_property_readonly("item_type",
                             [](const BatchDecodeState& s) {
                               py::array_t<int32_t> out(s.num_rows());
                               for (int64_t r = 0; r < s.num_rows(); ++r) out.mutable_data()[r] = s.row(r).type;
                               return out;
                             })
      .def_property_readonly("node",
                             [](const BatchDecodeState& s) {
                               py::array_t<int64_t> out(s.num_rows());
                               for (int64_t r = 0; r < s.num_rows(); ++r) out.mutable_data()[r] = s.row(r).node;
                               return out;
                             })
      .def(
          "error",
          [](const BatchDecodeState& s, int64_t r) {
            if (r < 0 || r >= s.num_rows()) throw py::index_error("row " + std::to_string(r) + " out of range");
            return s.row(r).error;
          },
          py::arg("row"))
      .def(
          "emitted",
          [](const BatchDecodeState& s, int64_t r) {
            if (r < 0 || r >= s.num_rows()) throw py::index_error("row " + std::to_string(r) + " out of range");
            const auto& e = s.row(r).emitted;
            return py::array_t<int32_t>(e.size(), e.data());
          },
          py::arg("row"))
      .def("is_allowed", &BatchDecodeState::is_allowed, py::arg("row"), py::arg("token"));
}
