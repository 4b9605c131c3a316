#include "neo/trie.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <sstream>

namespace neo {
namespace {

constexpr char kMagic[8] = {'N', 'E', 'O', 'T', 'R', 'I', 'E', '\0'};
constexpr uint32_t kVersion = 1;
constexpr int kMaxTypes = 64;  // allowed-type sets are 64-bit masks

template <class T>
std::shared_ptr<void> own_vector(std::vector<T>&& v, ArrayView<T>* view) {
  auto holder = std::make_shared<std::vector<T>>(std::move(v));
  view->ptr = holder->data();
  view->n = holder->size();
  return holder;
}

std::string fmt_type(int32_t t) { return "type " + std::to_string(t); }

const char* file_kind(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO (named pipe)";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  return "a special file";
}

int bits_for(int32_t k) {
  int b = 1;
  while ((int64_t{1} << b) < k) ++b;
  return b;
}

// LSD radix sort of (key, index) pairs by `bits` low bits of key, 11 bits per pass.
void radix_sort_pairs(std::vector<uint64_t>& keys, std::vector<uint32_t>& idx, int bits) {
  const size_t n = keys.size();
  std::vector<uint64_t> k2(n);
  std::vector<uint32_t> i2(n);
  constexpr int kDigit = 11;
  constexpr size_t kBuckets = size_t{1} << kDigit;
  std::vector<size_t> count(kBuckets);
  for (int shift = 0; shift < bits; shift += kDigit) {
    std::fill(count.begin(), count.end(), 0);
    for (size_t i = 0; i < n; ++i) ++count[(keys[i] >> shift) & (kBuckets - 1)];
    size_t sum = 0;
    for (auto& c : count) {
      size_t tmp = c;
      c = sum;
      sum += tmp;
    }
    for (size_t i = 0; i < n; ++i) {
      size_t pos = count[(keys[i] >> shift) & (kBuckets - 1)]++;
      k2[pos] = keys[i];
      i2[pos] = idx[i];
    }
    keys.swap(k2);
    idx.swap(i2);
  }
}

// LSD radix sort of words by bits [lo, lo + bits), 11 bits per pass (2048 counters stay in L1).
void radix_sort_words(std::vector<uint64_t>& words, int lo, int bits) {
  const size_t n = words.size();
  std::vector<uint64_t> tmp(n);
  constexpr int kDigit = 11;
  constexpr size_t kBuckets = size_t{1} << kDigit;
  std::vector<size_t> count(kBuckets);
  for (int shift = lo; shift < lo + bits; shift += kDigit) {
    std::fill(count.begin(), count.end(), 0);
    for (size_t i = 0; i < n; ++i) ++count[(words[i] >> shift) & (kBuckets - 1)];
    size_t sum = 0;
    for (auto& c : count) {
      size_t c0 = c;
      c = sum;
      sum += c0;
    }
    for (size_t i = 0; i < n; ++i) tmp[count[(words[i] >> shift) & (kBuckets - 1)]++] = words[i];
    words.swap(tmp);
  }
}

struct Reader {
  const uint8_t* p;
  size_t n, off = 0;
  const std::string& path;
  template <class T>
  T get() {
    if (off + sizeof(T) > n) throw FormatError("index file '" + path + "' is truncated (header)");
    T v;
    std::memcpy(&v, p + off, sizeof(T));
    off += sizeof(T);
    return v;
  }
  void align8() { off = (off + 7) & ~size_t{7}; }
  template <class T>
  ArrayView<T> view(size_t count) {
    align8();
    if (count > (n - std::min(off, n)) / sizeof(T)) throw FormatError("index file '" + path + "' is truncated (arrays)");
    ArrayView<T> v{reinterpret_cast<const T*>(p + off), count};
    off += count * sizeof(T);
    return v;
  }
};

struct Writer {
  std::vector<uint8_t> buf;
  template <class T>
  void put(T v) {
    size_t o = buf.size();
    buf.resize(o + sizeof(T));
    std::memcpy(buf.data() + o, &v, sizeof(T));
  }
  void align8() { buf.resize((buf.size() + 7) & ~size_t{7}, 0); }
  template <class T>
  void array(const ArrayView<T>& a) {
    align8();
    size_t o = buf.size();
    buf.resize(o + a.size() * sizeof(T));
    if (a.size()) std::memcpy(buf.data() + o, a.ptr, a.size() * sizeof(T));
  }
};

}  // namespace

// 64-bit checksum over 8-byte words (FNV-1a style with a final avalanche): catches truncation and
// bit flips; it is not meant to resist deliberate tampering.
uint64_t checksum64(const uint8_t* data, size_t n) {
  uint64_t h = 0xcbf29ce484222325ULL;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, data + i, 8);
    h = (h ^ w) * 0x100000001b3ULL;
    h ^= h >> 29;
  }
  for (; i < n; ++i) h = (h ^ data[i]) * 0x100000001b3ULL;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  return h;
}

void validate_layout(const LayoutSpec& layout) {
  if (layout.vocab_size <= 0) throw InvalidArgument("vocab_size must be > 0, got " + std::to_string(layout.vocab_size));
  if (layout.types.empty()) throw InvalidArgument("layout has no item types");
  if (static_cast<int>(layout.types.size()) > kMaxTypes)
    throw InvalidArgument("at most " + std::to_string(kMaxTypes) + " item types are supported, got " +
                          std::to_string(layout.types.size()));
  auto in_vocab = [&](int64_t tok) { return tok >= 0 && tok < layout.vocab_size; };
  if (!in_vocab(layout.open_id)) throw InvalidArgument("open_id " + std::to_string(layout.open_id) + " outside the vocabulary");
  if (!in_vocab(layout.close_id)) throw InvalidArgument("close_id " + std::to_string(layout.close_id) + " outside the vocabulary");
  if (layout.open_id == layout.close_id) throw InvalidArgument("open_id and close_id must differ");
  std::vector<std::pair<int64_t, int64_t>> spans = {{layout.open_id, layout.open_id + 1}, {layout.close_id, layout.close_id + 1}};
  for (size_t t = 0; t < layout.types.size(); ++t) {
    const auto& ty = layout.types[t];
    if (ty.band_start.empty() || ty.band_start.size() != ty.band_size.size())
      throw InvalidArgument(fmt_type(int32_t(t)) + ": needs >= 1 level and one band size per band start");
    if (ty.band_start.size() > 64) throw InvalidArgument(fmt_type(int32_t(t)) + ": more than 64 levels");
    for (size_t l = 0; l < ty.band_start.size(); ++l) {
      int64_t s = ty.band_start[l], k = ty.band_size[l];
      if (k < 1 || k > 65536)
        throw InvalidArgument(fmt_type(int32_t(t)) + " level " + std::to_string(l) + ": codebook size " + std::to_string(k) +
                              " not in [1, 65536]");
      if (s < 0 || s + k > layout.vocab_size)
        throw InvalidArgument(fmt_type(int32_t(t)) + " level " + std::to_string(l) + ": band [" + std::to_string(s) + ", " +
                              std::to_string(s + k) + ") outside the vocabulary [0, " + std::to_string(layout.vocab_size) + ")");
      spans.push_back({s, s + k});
    }
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i)
    if (spans[i].first < spans[i - 1].second)
      throw InvalidArgument("token bands overlap at token " + std::to_string(spans[i].first));
}

int64_t TypeTrie::find_child(int64_t node, int32_t code_value) const {
  if (node < 0 || node >= num_internal() || code_value < 0 || code_value > 65535) return -1;
  const uint16_t* b = code.ptr + child_begin[node];
  const uint16_t* e = code.ptr + child_begin[node + 1];
  const uint16_t* it = std::lower_bound(b, e, static_cast<uint16_t>(code_value));
  if (it == e || *it != code_value) return -1;
  return it - code.ptr;
}

void TypeTrie::leaf_range(int64_t node, int32_t depth, int64_t* lo, int64_t* hi) const {
  int64_t a = node, b = node + 1;
  for (int32_t d = depth; d < levels; ++d) {
    a = child_begin[a];
    b = child_begin[b];
  }
  *lo = a - first_leaf();
  *hi = b - first_leaf();
}

std::shared_ptr<SidIndex> SidIndex::build(const LayoutSpec& layout, const std::vector<TypeInput>& inputs) {
  validate_layout(layout);
  if (inputs.size() != layout.types.size())
    throw InvalidArgument("got SIDs for " + std::to_string(inputs.size()) + " types but the layout has " +
                          std::to_string(layout.types.size()));
  std::shared_ptr<SidIndex> index(new SidIndex());
  index->layout_ = layout;
  int64_t total = 0;
  for (const auto& in : inputs) total += in.num_items;
  if (total == 0) throw InvalidArgument("empty catalog: no SIDs given for any type");

  for (size_t t = 0; t < inputs.size(); ++t) {
    const TypeInput& in = inputs[t];
    const TypeBandsSpec& bands = layout.types[t];
    const int32_t L = static_cast<int32_t>(bands.band_start.size());
    if (in.levels != L)
      throw InvalidArgument(fmt_type(int32_t(t)) + ": SIDs have " + std::to_string(in.levels) + " levels but the layout has " +
                            std::to_string(L));
    if (in.num_items < 0 || in.num_items >= (int64_t{1} << 31))
      throw InvalidArgument(fmt_type(int32_t(t)) + ": number of items must be in [0, 2^31)");
    const int64_t N = in.num_items;
    TypeTrie tt;
    tt.levels = L;
    tt.band_start = bands.band_start;
    tt.band_size = bands.band_size;

    // Per level: where its code sits in a packed key (level 0 most significant).
    int total_bits = 0;
    std::vector<int> shift(L);
    std::vector<uint64_t> mask(L);
    for (int32_t l = L - 1; l >= 0; --l) {
      shift[l] = total_bits;
      mask[l] = (uint64_t{1} << bits_for(bands.band_size[l])) - 1;
      total_bits += bits_for(bands.band_size[l]);
    }
    auto bad_token = [&](int64_t i, int32_t l) {
      const int64_t tok = in.tokens[i * L + l];
      return InvalidArgument(fmt_type(int32_t(t)) + ": token " + std::to_string(tok) + " at row " + std::to_string(i) + ", level " +
                             std::to_string(l) + " is outside that level's band [" + std::to_string(bands.band_start[l]) + ", " +
                             std::to_string(int64_t(bands.band_start[l]) + bands.band_size[l]) + ")");
    };
    for (int64_t i = 0; i < N; ++i)
      if (in.item_rows[i] < 0)
        throw InvalidArgument(fmt_type(int32_t(t)) + ": item row " + std::to_string(in.item_rows[i]) + " at row " + std::to_string(i) +
                              " is negative");

    // 1-2. validate tokens and sort the items lexicographically by code path. Common case (paths
    // of <= 32 bits, e.g. 4 x 256 codes): one word per item holds (path, input index), so the
    // sort and the pass below stream through memory instead of chasing a permutation.
    const bool packed_path = total_bits <= 32;
    std::vector<uint64_t> packed;
    std::vector<uint16_t> codes;
    std::vector<uint32_t> order;
    if (packed_path) {
      packed.resize(static_cast<size_t>(N));
      for (int64_t i = 0; i < N; ++i) {
        uint64_t k = 0;
        for (int32_t l = 0; l < L; ++l) {
          const uint64_t c = uint64_t(int64_t(in.tokens[i * L + l]) - bands.band_start[l]);
          if (c >= uint64_t(bands.band_size[l])) throw bad_token(i, l);
          k |= c << shift[l];
        }
        packed[i] = (k << 32) | uint64_t(i);
      }
      radix_sort_words(packed, 32, total_bits);
    } else {
      codes.resize(static_cast<size_t>(N) * L);
      for (int64_t i = 0; i < N; ++i)
        for (int32_t l = 0; l < L; ++l) {
          const uint64_t c = uint64_t(int64_t(in.tokens[i * L + l]) - bands.band_start[l]);
          if (c >= uint64_t(bands.band_size[l])) throw bad_token(i, l);
          codes[i * L + l] = static_cast<uint16_t>(c);
        }
      order.resize(static_cast<size_t>(N));
      std::iota(order.begin(), order.end(), 0u);
      if (total_bits <= 64) {
        std::vector<uint64_t> keys(static_cast<size_t>(N));
        for (int64_t i = 0; i < N; ++i) {
          uint64_t k = 0;
          for (int32_t l = 0; l < L; ++l) k |= uint64_t(codes[i * L + l]) << shift[l];
          keys[i] = k;
        }
        radix_sort_pairs(keys, order, total_bits);
      } else {
        std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
          return std::lexicographical_compare(&codes[size_t(a) * L], &codes[size_t(a) * L + L], &codes[size_t(b) * L],
                                              &codes[size_t(b) * L + L]);
        });
      }
    }
    auto index_at = [&](int64_t s) -> uint32_t { return packed_path ? static_cast<uint32_t>(packed[s]) : order[s]; };
    auto code_at = [&](int64_t s, int32_t l) -> uint16_t {
      return packed_path ? static_cast<uint16_t>((packed[s] >> (32 + shift[l])) & mask[l]) : codes[size_t(order[s]) * L + l];
    };

    // 3. one pass: nodes are born where the code path first differs from the previous item's.
    std::vector<std::vector<uint16_t>> depth_codes(L + 1);
    std::vector<std::vector<uint32_t>> depth_nchild(L);  // child counts of internal nodes per depth
    depth_codes[L].reserve(static_cast<size_t>(N));
    depth_codes[0].push_back(0);
    depth_nchild[0].push_back(0);
    int64_t dup_count = 0;
    std::string dup_example;
    for (int64_t s = 0; s < N; ++s) {
      int32_t lcp = 0;
      if (s > 0) {
        while (lcp < L && code_at(s, lcp) == code_at(s - 1, lcp)) ++lcp;
        if (lcp == L) {
          if (dup_count++ == 0)
            dup_example = "rows " + std::to_string(std::min(index_at(s - 1), index_at(s))) + " and " +
                          std::to_string(std::max(index_at(s - 1), index_at(s)));
          continue;
        }
      }
      for (int32_t d = lcp + 1; d <= L; ++d) {
        depth_codes[d].push_back(code_at(s, d - 1));
        depth_nchild[d - 1].back() += 1;
        if (d < L) depth_nchild[d].push_back(0);
      }
    }
    if (dup_count)
      throw InvalidArgument(fmt_type(int32_t(t)) + ": " + std::to_string(dup_count) + " duplicate SID(s); e.g. " + dup_example +
                            " have the same codes (resolve collisions first, e.g. with an extra level)");

    tt.depth_begin.assign(L + 2, 0);
    for (int32_t d = 0; d <= L; ++d) tt.depth_begin[d + 1] = tt.depth_begin[d] + int64_t(depth_codes[d].size());
    if (tt.num_nodes() >= (int64_t{1} << 32) - 1) throw InvalidArgument(fmt_type(int32_t(t)) + ": too many trie nodes for 32-bit ids");
    std::vector<uint16_t> code_arr;
    code_arr.reserve(tt.num_nodes());
    for (auto& v : depth_codes) {
      code_arr.insert(code_arr.end(), v.begin(), v.end());
      std::vector<uint16_t>().swap(v);
    }
    std::vector<uint32_t> child_arr;
    child_arr.reserve(tt.num_internal() + 1);
    uint32_t next = 1;
    for (int32_t d = 0; d < L; ++d)
      for (uint32_t c : depth_nchild[d]) {
        child_arr.push_back(next);
        next += c;
      }
    child_arr.push_back(next);
    std::vector<int32_t> leaf_arr(static_cast<size_t>(N));
    for (int64_t s = 0; s < N; ++s) leaf_arr[s] = in.item_rows[index_at(s)];

    index->storage_.push_back(own_vector(std::move(code_arr), &tt.code));
    index->storage_.push_back(own_vector(std::move(child_arr), &tt.child_begin));
    index->storage_.push_back(own_vector(std::move(leaf_arr), &tt.leaf_item));
    index->types_.push_back(std::move(tt));
  }
  index->finalize();
  return index;
}

void SidIndex::finalize() {
  leaf_offset_.assign(types_.size() + 1, 0);
  int64_t max_item = -1;
  for (size_t t = 0; t < types_.size(); ++t) {
    leaf_offset_[t + 1] = leaf_offset_[t] + types_[t].num_leaves();
    for (int32_t item : types_[t].leaf_item) max_item = std::max<int64_t>(max_item, item);
  }
  if (leaf_offset_.back() >= (int64_t{1} << 31)) throw InvalidArgument("more than 2^31 items are not supported");
  const int64_t n = leaf_offset_.back();
  auto dup_error = [](int64_t item) {
    return InvalidArgument("item row " + std::to_string(item) + " has more than one SID (item rows must be unique across types)");
  };
  if (max_item < 2 * n + 1024) {
    item_to_leaf_.assign(static_cast<size_t>(max_item + 1), -1);
    for (size_t t = 0; t < types_.size(); ++t) {
      const TypeTrie& tt = types_[t];
      for (int64_t j = 0; j < tt.num_leaves(); ++j) {
        int32_t item = tt.leaf_item[j];
        if (item < 0) throw InvalidArgument("negative item row " + std::to_string(item));
        if (item_to_leaf_[item] >= 0) throw dup_error(item);
        item_to_leaf_[item] = static_cast<int32_t>(leaf_offset_[t] + j);
      }
    }
    return;
  }
  std::vector<std::pair<int32_t, int32_t>> pairs;
  pairs.reserve(static_cast<size_t>(n));
  for (size_t t = 0; t < types_.size(); ++t)
    for (int64_t j = 0; j < types_[t].num_leaves(); ++j) {
      int32_t item = types_[t].leaf_item[j];
      if (item < 0) throw InvalidArgument("negative item row " + std::to_string(item));
      pairs.push_back({item, static_cast<int32_t>(leaf_offset_[t] + j)});
    }
  std::sort(pairs.begin(), pairs.end());
  sparse_items_.resize(pairs.size());
  sparse_leaves_.resize(pairs.size());
  for (size_t i = 0; i < pairs.size(); ++i) {
    if (i && pairs[i].first == pairs[i - 1].first) throw dup_error(pairs[i].first);
    sparse_items_[i] = pairs[i].first;
    sparse_leaves_[i] = pairs[i].second;
  }
}

int64_t SidIndex::leaf_of_item(int64_t item_row) const {
  if (item_row < 0) return -1;
  if (sparse_items_.empty())
    return item_row < static_cast<int64_t>(item_to_leaf_.size()) ? item_to_leaf_[item_row] : -1;
  if (item_row > INT32_MAX) return -1;
  auto it = std::lower_bound(sparse_items_.begin(), sparse_items_.end(), static_cast<int32_t>(item_row));
  if (it == sparse_items_.end() || *it != item_row) return -1;
  return sparse_leaves_[it - sparse_items_.begin()];
}

int64_t SidIndex::num_items() const { return leaf_offset_.empty() ? 0 : leaf_offset_.back(); }

int32_t SidIndex::type_of_global_leaf(int64_t leaf) const {
  auto it = std::upper_bound(leaf_offset_.begin(), leaf_offset_.end(), leaf);
  return static_cast<int32_t>(it - leaf_offset_.begin()) - 1;
}

int64_t SidIndex::memory_bytes() const {
  int64_t b = static_cast<int64_t>((item_to_leaf_.size() + sparse_items_.size() + sparse_leaves_.size()) * sizeof(int32_t));
  for (const auto& tt : types_)
    b += int64_t(tt.child_begin.size() * 4 + tt.code.size() * 2 + tt.leaf_item.size() * 4 + tt.depth_begin.size() * 8);
  return b;
}

std::vector<LevelStats> SidIndex::level_stats() const {
  std::vector<LevelStats> out;
  for (size_t t = 0; t < types_.size(); ++t) {
    const TypeTrie& tt = types_[t];
    for (int32_t d = 0; d <= tt.levels; ++d) {
      LevelStats s;
      s.type = int32_t(t);
      s.depth = d;
      s.nodes = tt.depth_begin[d + 1] - tt.depth_begin[d];
      if (d < tt.levels) {
        for (int64_t n = tt.depth_begin[d]; n < tt.depth_begin[d + 1]; ++n)
          s.max_children = std::max<int64_t>(s.max_children, tt.child_begin[n + 1] - tt.child_begin[n]);
        s.mean_children = double(tt.depth_begin[d + 2] - tt.depth_begin[d + 1]) / double(std::max<int64_t>(1, s.nodes));
      }
      out.push_back(s);
    }
  }
  return out;
}

int32_t SidIndex::type_of_first_token(int32_t tok) const {
  for (size_t t = 0; t < types_.size(); ++t) {
    int64_t c = int64_t(tok) - types_[t].band_start[0];
    if (c >= 0 && c < types_[t].band_size[0]) return int32_t(t);
  }
  return -1;
}

int64_t SidIndex::lookup(int32_t t, const int32_t* tokens, int32_t length) const {
  if (t < 0 || t >= num_types()) return -1;
  const TypeTrie& tt = types_[t];
  if (length != tt.levels) return -1;
  int64_t node = 0;
  for (int32_t l = 0; l < tt.levels; ++l) {
    int64_t c = int64_t(tokens[l]) - tt.band_start[l];
    if (c < 0 || c >= tt.band_size[l]) return -1;
    node = tt.find_child(node, int32_t(c));
    if (node < 0) return -1;
  }
  return tt.leaf_item[node - tt.first_leaf()];
}

void SidIndex::leaf_tokens(int64_t leaf, int32_t* out) const {
  int32_t t = type_of_global_leaf(leaf);
  const TypeTrie& tt = types_[t];
  int64_t node = tt.first_leaf() + (leaf - leaf_offset_[t]);
  for (int32_t d = tt.levels; d >= 1; --d) {
    out[d - 1] = tt.band_start[d - 1] + tt.code[node];
    // parent: the internal node at depth d-1 whose child range holds `node`.
    const uint32_t* b = tt.child_begin.ptr + tt.depth_begin[d - 1];
    const uint32_t* e = tt.child_begin.ptr + tt.depth_begin[d];
    node = (std::upper_bound(b, e, uint32_t(node)) - tt.child_begin.ptr) - 1;
  }
}

// ------------------------------------------------------------------------------------------ I/O

void SidIndex::save(const std::string& path) const {
  Writer w;
  w.put<int32_t>(layout_.vocab_size);
  w.put<int32_t>(layout_.open_id);
  w.put<int32_t>(layout_.close_id);
  w.put<int32_t>(num_types());
  for (const auto& tt : types_) {
    w.put<int32_t>(tt.levels);
    for (int32_t l = 0; l < tt.levels; ++l) w.put<int32_t>(tt.band_start[l]);
    for (int32_t l = 0; l < tt.levels; ++l) w.put<int32_t>(tt.band_size[l]);
    w.align8();
    for (int64_t v : tt.depth_begin) w.put<int64_t>(v);
  }
  for (const auto& tt : types_) {
    w.array(tt.child_begin);
    w.array(tt.code);
    w.array(tt.leaf_item);
  }
  w.align8();
  std::vector<uint8_t> header(32, 0);
  std::memcpy(header.data(), kMagic, 8);
  uint32_t version = kVersion, header_bytes = 32;
  uint64_t payload = w.buf.size(), sum = checksum64(w.buf.data(), w.buf.size());
  std::memcpy(header.data() + 8, &version, 4);
  std::memcpy(header.data() + 12, &header_bytes, 4);
  std::memcpy(header.data() + 16, &payload, 8);
  std::memcpy(header.data() + 24, &sum, 8);

  const std::string tmp = path + ".tmp" + std::to_string(::getpid());
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw InvalidArgument("cannot write index file '" + path + "': " + std::strerror(errno));
  bool ok = std::fwrite(header.data(), 1, header.size(), f) == header.size() &&
            std::fwrite(w.buf.data(), 1, w.buf.size(), f) == w.buf.size();
  ok = (std::fflush(f) == 0) && ok;
  ok = (::fsync(::fileno(f)) == 0) && ok;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw InvalidArgument("failed to write index file '" + path + "'");
  }
}

namespace {
struct MappedFile {
  void* addr = nullptr;
  size_t len = 0;
  ~MappedFile() {
    if (addr) ::munmap(addr, len);
  }
};
}  // namespace

std::shared_ptr<SidIndex> SidIndex::load(const std::string& path, bool use_mmap) {
  // Check the file type before opening: open() blocks forever on a FIFO with no writer, and a
  // device or socket is never an index. O_NONBLOCK covers a path swapped for a FIFO in between
  // (it has no effect on reads of a regular file); fstat then re-checks what was opened.
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) throw FormatError("cannot open index file '" + path + "': " + std::strerror(errno));
  if (!S_ISREG(st.st_mode))
    throw FormatError("index path '" + path + "' is " + file_kind(st.st_mode) + ", not a regular file");
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw FormatError("cannot open index file '" + path + "': " + std::strerror(errno));
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw FormatError("index path '" + path + "' is not a regular file");
  }
  const size_t size = static_cast<size_t>(st.st_size);
  std::shared_ptr<void> owner;
  const uint8_t* data = nullptr;
  if (size < 32) {
    ::close(fd);
    throw FormatError("index file '" + path + "' is truncated (" + std::to_string(size) + " bytes)");
  }
  if (use_mmap) {
    auto m = std::make_shared<MappedFile>();
    m->addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (m->addr == MAP_FAILED) {
      m->addr = nullptr;
      throw FormatError("cannot memory-map index file '" + path + "'");
    }
    m->len = size;
    data = static_cast<const uint8_t*>(m->addr);
    owner = m;
  } else {
    auto buf = std::make_shared<std::vector<uint64_t>>((size + 7) / 8);
    size_t got = 0;
    while (got < size) {
      ssize_t r = ::read(fd, reinterpret_cast<uint8_t*>(buf->data()) + got, size - got);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      got += size_t(r);
    }
    ::close(fd);
    if (got != size) throw FormatError("failed to read index file '" + path + "'");
    data = reinterpret_cast<const uint8_t*>(buf->data());
    owner = buf;
  }
  if (std::memcmp(data, kMagic, 8) != 0) throw FormatError("'" + path + "' is not a neo index file (bad magic)");
  uint32_t version, header_bytes;
  uint64_t payload, sum;
  std::memcpy(&version, data + 8, 4);
  std::memcpy(&header_bytes, data + 12, 4);
  std::memcpy(&payload, data + 16, 8);
  std::memcpy(&sum, data + 24, 8);
  if (version != kVersion)
    throw FormatError("index file '" + path + "' has format version " + std::to_string(version) + "; this neo reads version " +
                      std::to_string(kVersion));
  if (header_bytes != 32 || payload != size - 32)
    throw FormatError("index file '" + path + "' is truncated or has trailing data (expected " +
                      std::to_string(uint64_t(header_bytes) + payload) + " bytes, found " + std::to_string(size) + ")");
  if (checksum64(data + 32, payload) != sum) throw FormatError("index file '" + path + "' is corrupted (checksum mismatch)");

  std::shared_ptr<SidIndex> index(new SidIndex());
  index->storage_.push_back(owner);
  index->file_bytes_ = int64_t(size);
  Reader r{data + 32, size_t(payload), 0, path};
  LayoutSpec& lay = index->layout_;
  lay.vocab_size = r.get<int32_t>();
  lay.open_id = r.get<int32_t>();
  lay.close_id = r.get<int32_t>();
  int32_t nt = r.get<int32_t>();
  if (nt < 1 || nt > kMaxTypes) throw FormatError("index file '" + path + "' is corrupted (type count)");
  for (int32_t t = 0; t < nt; ++t) {
    TypeTrie tt;
    tt.levels = r.get<int32_t>();
    if (tt.levels < 1 || tt.levels > 64) throw FormatError("index file '" + path + "' is corrupted (level count)");
    for (int32_t l = 0; l < tt.levels; ++l) tt.band_start.push_back(r.get<int32_t>());
    for (int32_t l = 0; l < tt.levels; ++l) tt.band_size.push_back(r.get<int32_t>());
    r.align8();
    for (int32_t d = 0; d < tt.levels + 2; ++d) tt.depth_begin.push_back(r.get<int64_t>());
    lay.types.push_back({tt.band_start, tt.band_size});
    index->types_.push_back(std::move(tt));
  }
  try {
    validate_layout(lay);
  } catch (const InvalidArgument& e) {
    throw FormatError("index file '" + path + "' is corrupted (layout: " + e.what() + ")");
  }
  for (auto& tt : index->types_) {
    if (tt.depth_begin[0] != 0 || tt.depth_begin[1] != 1) throw FormatError("index file '" + path + "' is corrupted (root)");
    const bool empty_type = tt.depth_begin[tt.levels + 1] == 1;  // a type with no items: just a root
    for (int32_t d = 1; d <= tt.levels; ++d) {
      const bool ok = empty_type ? tt.depth_begin[d + 1] == 1
                                 : (tt.depth_begin[d + 1] > tt.depth_begin[d] && tt.depth_begin[d + 1] < (int64_t{1} << 32));
      if (!ok) throw FormatError("index file '" + path + "' is corrupted (depth offsets)");
    }
    tt.child_begin = r.view<uint32_t>(size_t(tt.num_internal() + 1));
    tt.code = r.view<uint16_t>(size_t(tt.num_nodes()));
    tt.leaf_item = r.view<int32_t>(size_t(tt.num_leaves()));
  }
  try {
    index->validate_structure();
    index->finalize();
  } catch (const std::exception& e) {
    throw FormatError("index file '" + path + "' is corrupted (" + e.what() + ")");
  }
  return index;
}

// Everything a query relies on, so a file that passes the checksum but was written wrongly still
// cannot make a query read out of bounds.
void SidIndex::validate_structure() const {
  for (size_t t = 0; t < types_.size(); ++t) {
    const TypeTrie& tt = types_[t];
    if (tt.child_begin[0] != 1) throw InvalidArgument("child offsets of " + fmt_type(int32_t(t)));
    if (tt.num_leaves() == 0) {  // empty type: root without children
      if (tt.child_begin[1] != 1) throw InvalidArgument("empty " + fmt_type(int32_t(t)) + " has children");
      continue;
    }
    for (int64_t n = 0; n < tt.num_internal(); ++n) {
      if (tt.child_begin[n + 1] <= tt.child_begin[n]) throw InvalidArgument("empty or unordered child range in " + fmt_type(int32_t(t)));
    }
    for (int32_t d = 0; d < tt.levels; ++d) {
      // children of depth-d nodes are exactly the depth-(d+1) nodes
      if (tt.child_begin[tt.depth_begin[d]] != tt.depth_begin[d + 1] || tt.child_begin[tt.depth_begin[d + 1]] != tt.depth_begin[d + 2])
        throw InvalidArgument("child ranges cross depths in " + fmt_type(int32_t(t)));
      for (int64_t n = tt.depth_begin[d]; n < tt.depth_begin[d + 1]; ++n) {
        for (uint32_t c = tt.child_begin[n]; c < tt.child_begin[n + 1]; ++c) {
          if (tt.code[c] >= tt.band_size[d]) throw InvalidArgument("code outside its band in " + fmt_type(int32_t(t)));
          if (c > tt.child_begin[n] && tt.code[c] <= tt.code[c - 1]) throw InvalidArgument("unsorted children in " + fmt_type(int32_t(t)));
        }
      }
    }
  }
}

}  // namespace neo
