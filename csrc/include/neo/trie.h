// SidIndex: the immutable prefix trie over the semantic IDs of a catalog.
//
// Layout (one block of flat arrays per item type; see csrc/README.md):
//   nodes are numbered in BFS order and, within a depth, in lexicographic order of their code
//   path, so the children of consecutive nodes are consecutive and one offsets array suffices.
//   depth_begin[d] .. depth_begin[d+1]   node ids at depth d (node 0 = root, depth L = leaves)
//   child_begin[n] .. child_begin[n+1]   children of internal node n, sorted by code
//   code[n]                              code of node n at its level (token = band_start + code)
//   leaf_item[j]                         item row of leaf node depth_begin[L] + j
// The leaves under any node form a contiguous range of leaf indices, found by descending the
// first/last child chains (O(L), no extra memory); exclusions and allow-lists use that.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "neo/common.h"

namespace neo {

struct TypeBandsSpec {
  std::vector<int32_t> band_start;  // token id of code 0, per level
  std::vector<int32_t> band_size;   // codebook size K, per level (1..65536)
};

struct LayoutSpec {
  int32_t vocab_size = 0;
  int32_t open_id = -1;
  int32_t close_id = -1;
  std::vector<TypeBandsSpec> types;
};

// SIDs of one item type, as token ids: tokens[i * levels + l] for item i (row-major int32[N, L]).
struct TypeInput {
  const int32_t* tokens = nullptr;
  int64_t num_items = 0;
  int32_t levels = 0;
  const int32_t* item_rows = nullptr;  // item row per SID (>= 0, unique over all types)
};

struct TypeTrie {
  int32_t levels = 0;
  std::vector<int32_t> band_start, band_size;
  std::vector<int64_t> depth_begin;  // levels + 2 entries
  ArrayView<uint32_t> child_begin;   // num_internal + 1
  ArrayView<uint16_t> code;          // num_nodes
  ArrayView<int32_t> leaf_item;      // num_leaves

  int64_t num_nodes() const { return depth_begin[levels + 1]; }
  int64_t num_internal() const { return depth_begin[levels]; }
  int64_t num_leaves() const { return depth_begin[levels + 1] - depth_begin[levels]; }
  int64_t first_leaf() const { return depth_begin[levels]; }
  // Child of `node` (internal) with this code, or -1.
  int64_t find_child(int64_t node, int32_t code_value) const;
  // Leaf index range [lo, hi) under node `node` at depth `depth`.
  void leaf_range(int64_t node, int32_t depth, int64_t* lo, int64_t* hi) const;
};

struct LevelStats {
  int32_t type = 0, depth = 0;
  int64_t nodes = 0;
  double mean_children = 0;
  int64_t max_children = 0;
};

class SidIndex {
 public:
  // Builds from per-type token ids. Sorting is O(N log N) (radix sort when the codes pack in
  // 64 bits). Throws InvalidArgument naming the type, input row and level of bad tokens, or the
  // input rows of duplicate SIDs / duplicate item rows.
  static std::shared_ptr<SidIndex> build(const LayoutSpec& layout, const std::vector<TypeInput>& inputs);
  // Reads a file written by save(); throws FormatError on a truncated, corrupted or foreign file.
  static std::shared_ptr<SidIndex> load(const std::string& path, bool use_mmap);
  // Writes atomically (temporary file + rename), so an existing file is never left half-written.
  void save(const std::string& path) const;

  const LayoutSpec& layout() const { return layout_; }
  int32_t num_types() const { return static_cast<int32_t>(types_.size()); }
  const TypeTrie& type(int32_t t) const { return types_[t]; }
  int64_t num_items() const;
  int64_t memory_bytes() const;
  std::vector<LevelStats> level_stats() const;

  // Item row -> global leaf id (type_leaf_offset(t) + local leaf), or -1.
  int64_t leaf_of_item(int64_t item_row) const;
  int64_t type_leaf_offset(int32_t t) const { return leaf_offset_[t]; }
  int32_t type_of_global_leaf(int64_t leaf) const;

  // Full-SID lookup: item row of the SID tokens[0..levels) of type t, or -1.
  int64_t lookup(int32_t t, const int32_t* tokens, int32_t length) const;
  // Type of a SID whose first token is `first_token`, or -1.
  int32_t type_of_first_token(int32_t first_token) const;
  // Token ids of the SID of global leaf `leaf` into out[0..levels).
  void leaf_tokens(int64_t leaf, int32_t* out) const;

 private:
  SidIndex() = default;
  void finalize();  // derived arrays (item_to_leaf, leaf offsets) + consistency checks
  void validate_structure() const;

  LayoutSpec layout_;
  std::vector<TypeTrie> types_;
  std::vector<int64_t> leaf_offset_;
  // Item row -> global leaf: a dense table when item rows are dense, else (item, leaf) pairs
  // sorted by item (binary search), so sparse catalog rows cost 8 bytes per item, not per row.
  std::vector<int32_t> item_to_leaf_;
  std::vector<int32_t> sparse_items_, sparse_leaves_;
  std::vector<std::shared_ptr<void>> storage_;  // owners of the array memory
  int64_t file_bytes_ = 0;
};

void validate_layout(const LayoutSpec& layout);

// Checksum stored in the index file header (over the payload); exposed for tools and tests.
uint64_t checksum64(const uint8_t* data, size_t n);

}  // namespace neo
