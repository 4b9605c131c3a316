// BatchDecodeState: per-row constrained-decoding state over a SidIndex (DESIGN.md section 2).
//
//   TEXT --[SID]--> span at the virtual root --> level 1 ... level L --[/SID]--> TEXT ; EOS -> DONE
//
// Any token that breaks the rules moves only its row into a sticky ERROR state with a readable
// reason; the batch goes on. Masks are packed int32 bitmasks, bit j of word w = token 32*w + j.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "neo/trie.h"

namespace neo {

enum class RowStatus : int8_t { kText = 0, kSpan = 1, kDone = 2, kError = 3 };
enum class OutputFormat : int8_t { kMixed = 0, kIds = 1, kText = 2 };

struct RowOptions {
  OutputFormat format = OutputFormat::kMixed;
  uint64_t allowed_types = ~uint64_t{0};  // bit t = item type t may be opened
  std::vector<int64_t> exclude;           // item rows never to emit
  bool has_allow = false;
  std::vector<int64_t> allow;             // if has_allow: only these item rows may be emitted
  bool exclude_emitted = true;            // an item emitted in this answer is not emitted again
  int32_t max_items = -1;                 // >= 0: after this many spans, no new span opens
};

// Sorted local leaf ids per type; copy-on-write between rows (beam search copies rows a lot).
struct RowFilter {
  std::vector<std::vector<int32_t>> excluded;  // per type
  std::vector<std::vector<int32_t>> allowed;   // per type, already minus excluded
  std::vector<uint8_t> has_allow;              // per type
};

struct Row {
  RowStatus status = RowStatus::kText;
  OutputFormat format = OutputFormat::kMixed;
  bool exclude_emitted = true;
  int32_t type = -1;   // -1 at the virtual span root
  int32_t depth = 0;   // 0 = just after [SID]
  int64_t node = 0;
  uint64_t allowed_types = ~uint64_t{0};
  int32_t max_items = -1;
  std::shared_ptr<const RowFilter> base_filter;  // from the options (null = none)
  std::shared_ptr<const RowFilter> filter;       // base + emitted exclusions
  std::vector<int32_t> emitted;                  // item rows completed so far
  std::string error;
  // Incremental fill bookkeeping: which words of which bitmask row (of which width) we last wrote
  // non-zero. A different row pointer or width means a full rewrite.
  const int32_t* last_mask_row = nullptr;
  int32_t last_mask_width = 0;
  int32_t dirty_lo = 0, dirty_hi = 0;
};

class BatchDecodeState {
 public:
  BatchDecodeState(std::shared_ptr<const SidIndex> index, int64_t num_rows, std::vector<int32_t> eos_ids,
                   std::vector<int32_t> separator_ids, int num_threads);

  int64_t num_rows() const { return static_cast<int64_t>(rows_.size()); }
  int32_t mask_words() const { return words_; }
  const SidIndex& index() const { return *index_; }

  void set_row_options(int64_t row, const RowOptions& options);
  // Rows back to TEXT with their options' filters; emitted items and errors cleared.
  void reset(const int64_t* rows, int64_t n);  // rows == nullptr: all rows

  // Writes the allowed-token mask of state row r into bitmask row r (or of rows[i] into bitmask
  // row rows[i]; the rows must be distinct). Bitmask row b starts at bitmask + b * pitch and exactly
  // words [0, width) of it are written (width >= mask_words(); words past the vocabulary are
  // written 0); the words between width and pitch belong to the caller and are never touched.
  // |pitch| >= width is required when bitmask_rows > 1 (a negative pitch walks rows backwards, as
  // a reversed numpy view does). An empty batch is a no-op. With
  // `incremental`, a row whose previous mask is still in this buffer (same row pointer and width)
  // only rewrites what changed (the SID band inside spans): the caller must not modify the bitmask
  // between calls. Throws InvalidArgument (nothing written) on a bad geometry or bad rows.
  void fill_bitmask(int32_t* bitmask, int64_t bitmask_rows, int64_t width, int64_t pitch, const int64_t* rows,
                    int64_t n, bool incremental);
  // Advances state row r by tokens[r] (or rows[i] by tokens[i]); completed[i] receives the item row
  // whose span just closed, else -1.
  void advance(const int64_t* tokens, const int64_t* rows, int64_t n, int32_t* completed);
  // New row i := old row src[i]; the number of rows becomes n (beam search reorder / expand).
  void reorder(const int64_t* src, int64_t n);

  const Row& row(int64_t r) const { return rows_[r]; }
  // Whether `token` is allowed in row r right now (same rules as the mask).
  bool is_allowed(int64_t r, int64_t token) const;

 private:
  void fill_row(Row& row, int32_t* out, int32_t width, bool incremental) const;
  int32_t advance_row(Row& row, int64_t token) const;
  void set_error(Row& row, std::string msg) const;
  bool child_offered(const Row& row, int32_t t, int64_t child, int32_t depth) const;
  bool type_open(const Row& row, int32_t t) const;
  bool any_type_open(const Row& row) const;
  bool can_open_span(const Row& row) const;
  // Sets the bits of the offered children of `node` (at `depth`, type t); returns [lo, hi) words touched.
  void set_children_bits(const Row& row, int32_t t, int64_t node, int32_t depth, int32_t* out, int32_t* lo,
                         int32_t* hi) const;
  void note_emitted(Row& row, int32_t item) const;
  std::shared_ptr<const RowFilter> make_filter(const RowOptions& opt) const;

  std::shared_ptr<const SidIndex> index_;
  std::vector<Row> rows_;
  std::vector<int32_t> eos_ids_, separator_ids_;
  int32_t vocab_ = 0, words_ = 0;
  std::vector<int32_t> text_mask_mixed_, text_mask_text_, text_mask_ids_, done_mask_;
  std::vector<uint8_t> is_eos_, is_sep_;  // per token (vocab-sized bytes)
  std::vector<int8_t> token_type_;        // type of SID code tokens, -1 otherwise
  int num_threads_ = 0;
};

}  // namespace neo
