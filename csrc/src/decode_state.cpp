#include "neo/decode_state.h"

#include <algorithm>
#include <cstring>

#include "neo/thread_pool.h"

namespace neo {
namespace {

// Below this many rows a step's work (~0.2-0.7 us per row) is smaller than waking a worker on a
// busy machine, which costs tens of microseconds and wrecks the p99 (see BENCHMARKS.md).
constexpr int64_t kParallelMinRows = 512;

inline void set_bit(int32_t* out, int32_t tok, int32_t* lo, int32_t* hi) {
  const int32_t w = tok >> 5;
  out[w] |= static_cast<int32_t>(uint32_t{1} << (tok & 31));
  *lo = std::min(*lo, w);
  *hi = std::max(*hi, w + 1);
}

const char* format_name(OutputFormat f) {
  switch (f) {
    case OutputFormat::kMixed: return "mixed";
    case OutputFormat::kIds: return "ids";
    default: return "text";
  }
}

// Number of entries of sorted `v` in [lo, hi).
inline int64_t count_in(const std::vector<int32_t>& v, int64_t lo, int64_t hi) {
  auto a = std::lower_bound(v.begin(), v.end(), lo);
  auto b = std::lower_bound(a, v.end(), hi);
  return b - a;
}

}  // namespace

BatchDecodeState::BatchDecodeState(std::shared_ptr<const SidIndex> index, int64_t num_rows, std::vector<int32_t> eos_ids,
                                   std::vector<int32_t> separator_ids, int num_threads)
    : index_(std::move(index)), eos_ids_(std::move(eos_ids)), separator_ids_(std::move(separator_ids)), num_threads_(num_threads) {
  if (!index_) throw InvalidArgument("index is null");
  if (num_rows < 0) throw InvalidArgument("num_rows must be >= 0, got " + std::to_string(num_rows));
  const LayoutSpec& lay = index_->layout();
  vocab_ = lay.vocab_size;
  words_ = (vocab_ + 31) / 32;
  is_eos_.assign(vocab_, 0);
  is_sep_.assign(vocab_, 0);
  token_type_.assign(vocab_, -1);
  for (int32_t t = 0; t < index_->num_types(); ++t) {
    const TypeTrie& tt = index_->type(t);
    for (int32_t l = 0; l < tt.levels; ++l)
      for (int32_t c = 0; c < tt.band_size[l]; ++c) token_type_[tt.band_start[l] + c] = int8_t(t);
  }
  auto is_special = [&](int32_t tok) { return token_type_[tok] >= 0 || tok == lay.open_id || tok == lay.close_id; };
  for (int32_t tok : eos_ids_) {
    if (tok < 0 || tok >= vocab_) throw InvalidArgument("eos_token_ids: " + std::to_string(tok) + " outside the vocabulary");
    if (is_special(tok)) throw InvalidArgument("eos_token_ids: " + std::to_string(tok) + " is a SID token");
    is_eos_[tok] = 1;
  }
  for (int32_t tok : separator_ids_) {
    if (tok < 0 || tok >= vocab_) throw InvalidArgument("separator_token_ids: " + std::to_string(tok) + " outside the vocabulary");
    if (is_special(tok)) throw InvalidArgument("separator_token_ids: " + std::to_string(tok) + " is a SID token");
    is_sep_[tok] = 1;
  }
  // Text masks per format: in TEXT every token but SID codes and [/SID] is allowed (mixed).
  text_mask_mixed_.assign(words_, -1);
  if (vocab_ % 32) text_mask_mixed_[words_ - 1] = static_cast<int32_t>((uint32_t{1} << (vocab_ % 32)) - 1);
  auto clear = [](std::vector<int32_t>& m, int32_t tok) { m[tok >> 5] &= ~static_cast<int32_t>(uint32_t{1} << (tok & 31)); };
  auto set = [](std::vector<int32_t>& m, int32_t tok) { m[tok >> 5] |= static_cast<int32_t>(uint32_t{1} << (tok & 31)); };
  for (int32_t tok = 0; tok < vocab_; ++tok)
    if (token_type_[tok] >= 0) clear(text_mask_mixed_, tok);
  clear(text_mask_mixed_, lay.close_id);
  text_mask_text_ = text_mask_mixed_;
  clear(text_mask_text_, lay.open_id);
  text_mask_ids_.assign(words_, 0);
  done_mask_.assign(words_, 0);
  set(text_mask_ids_, lay.open_id);
  for (int32_t tok : separator_ids_) set(text_mask_ids_, tok);
  for (int32_t tok : eos_ids_) {
    set(text_mask_ids_, tok);
    set(done_mask_, tok);
  }
  rows_.resize(static_cast<size_t>(num_rows));
}

std::shared_ptr<const RowFilter> BatchDecodeState::make_filter(const RowOptions& opt) const {
  if (opt.exclude.empty() && !opt.has_allow) return nullptr;
  const int32_t nt = index_->num_types();
  auto f = std::make_shared<RowFilter>();
  f->excluded.resize(nt);
  f->allowed.resize(nt);
  f->has_allow.assign(nt, opt.has_allow ? 1 : 0);
  auto to_leaf = [&](int64_t item, const char* what) {
    int64_t leaf = index_->leaf_of_item(item);
    if (leaf < 0) throw InvalidArgument(std::string(what) + ": item row " + std::to_string(item) + " is not in the index");
    return leaf;
  };
  for (int64_t item : opt.exclude) {
    int64_t leaf = to_leaf(item, "exclude");
    int32_t t = index_->type_of_global_leaf(leaf);
    f->excluded[t].push_back(int32_t(leaf - index_->type_leaf_offset(t)));
  }
  for (int64_t item : opt.allow) {
    int64_t leaf = to_leaf(item, "allow");
    int32_t t = index_->type_of_global_leaf(leaf);
    f->allowed[t].push_back(int32_t(leaf - index_->type_leaf_offset(t)));
  }
  for (int32_t t = 0; t < nt; ++t) {
    auto& ex = f->excluded[t];
    std::sort(ex.begin(), ex.end());
    ex.erase(std::unique(ex.begin(), ex.end()), ex.end());
    auto& al = f->allowed[t];
    std::sort(al.begin(), al.end());
    al.erase(std::unique(al.begin(), al.end()), al.end());
    std::vector<int32_t> eff;
    std::set_difference(al.begin(), al.end(), ex.begin(), ex.end(), std::back_inserter(eff));
    al.swap(eff);
  }
  return f;
}

void BatchDecodeState::set_row_options(int64_t r, const RowOptions& opt) {
  if (r < 0 || r >= num_rows()) throw InvalidArgument("row " + std::to_string(r) + " out of range [0, " + std::to_string(num_rows()) + ")");
  Row& row = rows_[r];
  auto filt = make_filter(opt);  // may throw: leave the row untouched then
  row = Row();
  row.format = opt.format;
  row.allowed_types = opt.allowed_types;
  row.exclude_emitted = opt.exclude_emitted;
  row.max_items = opt.max_items;
  row.base_filter = filt;
  row.filter = filt;
}

void BatchDecodeState::reset(const int64_t* rows, int64_t n) {
  auto reset_one = [&](Row& row) {
    row.status = RowStatus::kText;
    row.type = -1;
    row.depth = 0;
    row.node = 0;
    row.filter = row.base_filter;
    row.emitted.clear();
    row.error.clear();
  };
  if (!rows) {
    for (auto& row : rows_) reset_one(row);
    return;
  }
  for (int64_t i = 0; i < n; ++i)
    if (rows[i] < 0 || rows[i] >= num_rows()) throw InvalidArgument("rows[" + std::to_string(i) + "] = " + std::to_string(rows[i]) + " out of range");
  for (int64_t i = 0; i < n; ++i) reset_one(rows_[rows[i]]);
}

bool BatchDecodeState::type_open(const Row& row, int32_t t) const {
  if (!((row.allowed_types >> t) & 1)) return false;
  if (index_->type(t).num_leaves() == 0) return false;
  if (!row.filter) return true;
  const RowFilter& f = *row.filter;
  if (f.has_allow[t]) return !f.allowed[t].empty();
  return int64_t(f.excluded[t].size()) < index_->type(t).num_leaves();
}

bool BatchDecodeState::any_type_open(const Row& row) const {
  for (int32_t t = 0; t < index_->num_types(); ++t)
    if (type_open(row, t)) return true;
  return false;
}

bool BatchDecodeState::can_open_span(const Row& row) const {
  if (row.format == OutputFormat::kText) return false;
  if (row.max_items >= 0 && int64_t(row.emitted.size()) >= row.max_items) return false;
  return any_type_open(row);
}

bool BatchDecodeState::child_offered(const Row& row, int32_t t, int64_t child, int32_t child_depth) const {
  if (!row.filter) return true;
  const RowFilter& f = *row.filter;
  int64_t lo, hi;
  index_->type(t).leaf_range(child, child_depth, &lo, &hi);
  if (f.has_allow[t]) return count_in(f.allowed[t], lo, hi) > 0;
  return count_in(f.excluded[t], lo, hi) < hi - lo;
}

void BatchDecodeState::set_children_bits(const Row& row, int32_t t, int64_t node, int32_t depth, int32_t* out, int32_t* lo,
                                         int32_t* hi) const {
  const TypeTrie& tt = index_->type(t);
  const int32_t band = tt.band_start[depth];
  const int64_t cb = tt.child_begin[node], ce = tt.child_begin[node + 1];
  const std::vector<int32_t>* list = nullptr;
  bool is_allow = false;
  if (row.filter) {
    const RowFilter& f = *row.filter;
    if (f.has_allow[t]) {
      list = &f.allowed[t];
      is_allow = true;
    } else if (!f.excluded[t].empty()) {
      list = &f.excluded[t];
    }
  }
  int64_t nlo = 0, nhi = 0;
  const int32_t* lb = nullptr;
  const int32_t* le = nullptr;
  if (list) {
    tt.leaf_range(node, depth, &nlo, &nhi);
    auto it_lo = std::lower_bound(list->begin(), list->end(), nlo);
    auto it_hi = std::lower_bound(it_lo, list->end(), nhi);
    lb = list->data() + (it_lo - list->begin());
    le = list->data() + (it_hi - list->begin());
    if (!is_allow && lb == le) list = nullptr;  // nothing excluded under this node: fast path
  }
  if (!list) {
    const uint16_t* codes = tt.code.ptr;
    for (int64_t c = cb; c < ce; ++c) set_bit(out, band + codes[c], lo, hi);
    return;
  }
  if (is_allow && lb == le) return;  // no allowed leaf under this node
  // Leaf bounds of each child: descend the child boundaries to the leaf depth (children of
  // consecutive nodes are consecutive, so boundary i of depth d maps to boundary i of depth d+1).
  thread_local std::vector<int64_t> bounds;
  const int64_t m = ce - cb;
  bounds.resize(size_t(m + 1));
  for (int64_t i = 0; i <= m; ++i) {
    int64_t x = cb + i;
    for (int32_t d = depth + 1; d < tt.levels; ++d) x = tt.child_begin[x];
    bounds[i] = x - tt.first_leaf();
  }
  const int32_t* p = lb;
  for (int64_t i = 0; i < m; ++i) {
    const int64_t b0 = bounds[i], b1 = bounds[i + 1];
    int64_t k = 0;
    while (p < le && *p < b1) {
      ++p;
      ++k;
    }
    const bool offered = is_allow ? (k > 0) : (k < b1 - b0);
    if (offered) set_bit(out, band + tt.code[cb + i], lo, hi);
  }
}

void BatchDecodeState::fill_row(Row& row, int32_t* out, int32_t width, bool incremental) const {
  // Writes exactly out[0, width): width >= words_ (checked by fill_bitmask).
  if (row.status == RowStatus::kText) {
    const std::vector<int32_t>& m = row.format == OutputFormat::kIds    ? text_mask_ids_
                                    : row.format == OutputFormat::kText ? text_mask_text_
                                                                        : text_mask_mixed_;
    std::memcpy(out, m.data(), size_t(words_) * 4);
    if (width > words_) std::memset(out + words_, 0, size_t(width - words_) * 4);
    const int32_t open = index_->layout().open_id;
    if (row.format != OutputFormat::kText && !can_open_span(row))
      out[open >> 5] &= ~static_cast<int32_t>(uint32_t{1} << (open & 31));
    row.last_mask_row = out;
    row.last_mask_width = width;
    row.dirty_lo = 0;
    row.dirty_hi = words_;  // words past the vocabulary are 0
    return;
  }
  if (incremental && row.last_mask_row == out && row.last_mask_width == width) {
    if (row.dirty_hi > row.dirty_lo) std::memset(out + row.dirty_lo, 0, size_t(row.dirty_hi - row.dirty_lo) * 4);
  } else {
    std::memset(out, 0, size_t(width) * 4);
  }
  int32_t lo = width, hi = 0;
  if (row.status == RowStatus::kSpan) {
    if (row.type < 0) {
      for (int32_t t = 0; t < index_->num_types(); ++t)
        if (type_open(row, t)) set_children_bits(row, t, 0, 0, out, &lo, &hi);
    } else if (row.depth == index_->type(row.type).levels) {
      set_bit(out, index_->layout().close_id, &lo, &hi);
    } else {
      set_children_bits(row, row.type, row.node, row.depth, out, &lo, &hi);
    }
  } else {  // DONE or ERROR: only EOS, so generation can finish cleanly
    for (int32_t tok : eos_ids_) set_bit(out, tok, &lo, &hi);
  }
  row.last_mask_row = out;
  row.last_mask_width = width;
  row.dirty_lo = std::min(lo, hi);
  row.dirty_hi = hi;
}

void BatchDecodeState::fill_bitmask(int32_t* bitmask, int64_t bitmask_rows, int64_t width, int64_t pitch,
                                    const int64_t* rows, int64_t n, bool incremental) {
  if (width < words_)
    throw InvalidArgument("bitmask has " + std::to_string(width) + " words per row; the vocabulary of " + std::to_string(vocab_) +
                          " tokens needs " + std::to_string(words_) + " (shape (rows, " + std::to_string(words_) + "))");
  if (width > INT32_MAX) throw InvalidArgument("bitmask is too wide (" + std::to_string(width) + " words per row)");
  if (bitmask_rows < 0) throw InvalidArgument("bitmask_rows must be >= 0, got " + std::to_string(bitmask_rows));
  if (bitmask_rows > 1 && (pitch < 0 ? -pitch : pitch) < width)
    throw InvalidArgument("bitmask rows overlap: row pitch " + std::to_string(pitch) + " words is less than the width " +
                          std::to_string(width));
  if (rows && n < 0) throw InvalidArgument("indices: negative length");
  const int64_t count = rows ? n : num_rows();
  if (!rows && bitmask_rows < num_rows())
    throw InvalidArgument("bitmask has " + std::to_string(bitmask_rows) + " rows but the state has " + std::to_string(num_rows()));
  if (rows) {
    // Distinct rows: two workers must never write one bitmask row (and one Row's bookkeeping).
    std::vector<uint8_t> seen(size_t(num_rows()), 0);
    for (int64_t i = 0; i < n; ++i) {
      if (rows[i] < 0 || rows[i] >= num_rows() || rows[i] >= bitmask_rows)
        throw InvalidArgument("indices[" + std::to_string(i) + "] = " + std::to_string(rows[i]) + " out of range for " +
                              std::to_string(num_rows()) + " state rows and " + std::to_string(bitmask_rows) + " bitmask rows");
      if (seen[size_t(rows[i])]++)
        throw InvalidArgument("indices[" + std::to_string(i) + "] = " + std::to_string(rows[i]) +
                              " repeats an earlier index; each row may be filled once per call");
    }
  }
  if (count == 0) return;
  if (!bitmask) throw InvalidArgument("bitmask is null");
  // Rows sit at unrelated trie nodes: on a 10M-item trie each one is a cache miss on child_begin
  // and another on the children's codes. Prefetch both a few rows ahead (the second depends on
  // the first, hence two distances) so the misses overlap instead of adding up.
  auto prefetch = [&](int64_t i, bool codes) {
    const Row& row = rows_[rows ? rows[i] : i];
    if (row.status != RowStatus::kSpan || row.type < 0) return;
    const TypeTrie& tt = index_->type(row.type);
    if (row.depth >= tt.levels) return;
    if (!codes) {
      __builtin_prefetch(tt.child_begin.ptr + row.node);
    } else {
      __builtin_prefetch(tt.code.ptr + tt.child_begin[row.node]);
    }
  };
  constexpr int64_t kFar = 8, kNear = 4;
  const int32_t w32 = static_cast<int32_t>(width);
  auto work = [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < std::min(e, b + kFar); ++i) prefetch(i, false);
    for (int64_t i = b; i < std::min(e, b + kNear); ++i) prefetch(i, true);
    for (int64_t i = b; i < e; ++i) {
      if (i + kFar < e) prefetch(i + kFar, false);
      if (i + kNear < e) prefetch(i + kNear, true);
      const int64_t r = rows ? rows[i] : i;
      fill_row(rows_[r], bitmask + r * pitch, w32, incremental);
    }
  };
  if (num_threads_ == 1 || count < kParallelMinRows) work(0, count);
  else ThreadPool::global().parallel_for(count, work);
}

void BatchDecodeState::set_error(Row& row, std::string msg) const {
  row.status = RowStatus::kError;
  row.error = std::move(msg);
}

void BatchDecodeState::note_emitted(Row& row, int32_t item) const {
  row.emitted.push_back(item);
  if (!row.exclude_emitted) return;
  const int64_t leaf = index_->leaf_of_item(item);
  const int32_t t = index_->type_of_global_leaf(leaf);
  const int32_t local = int32_t(leaf - index_->type_leaf_offset(t));
  auto f = row.filter ? std::make_shared<RowFilter>(*row.filter) : std::make_shared<RowFilter>();
  if (!row.filter) {
    f->excluded.resize(index_->num_types());
    f->allowed.resize(index_->num_types());
    f->has_allow.assign(index_->num_types(), 0);
  }
  auto& ex = f->excluded[t];
  auto it = std::lower_bound(ex.begin(), ex.end(), local);
  if (it == ex.end() || *it != local) ex.insert(it, local);
  auto& al = f->allowed[t];
  auto jt = std::lower_bound(al.begin(), al.end(), local);
  if (jt != al.end() && *jt == local) al.erase(jt);
  row.filter = std::move(f);
}

int32_t BatchDecodeState::advance_row(Row& row, int64_t tok) const {
  if (row.status == RowStatus::kDone || row.status == RowStatus::kError) return -1;
  const LayoutSpec& lay = index_->layout();
  if (tok < 0 || tok >= vocab_) {
    set_error(row, "token " + std::to_string(tok) + " is outside the vocabulary [0, " + std::to_string(vocab_) + ")");
    return -1;
  }
  if (row.status == RowStatus::kText) {
    if (is_eos_[tok]) {
      row.status = RowStatus::kDone;
    } else if (tok == lay.open_id) {
      if (row.format == OutputFormat::kText) return set_error(row, "[SID] opened but the output format is 'text'"), -1;
      if (row.max_items >= 0 && int64_t(row.emitted.size()) >= row.max_items)
        return set_error(row, "[SID] opened after max_items=" + std::to_string(row.max_items) + " items"), -1;
      if (!any_type_open(row)) return set_error(row, "[SID] opened but no item of an allowed type remains"), -1;
      row.status = RowStatus::kSpan;
      row.type = -1;
      row.depth = 0;
      row.node = 0;
    } else if (token_type_[tok] >= 0) {
      set_error(row, "SID code token " + std::to_string(tok) + " outside a [SID] span");
    } else if (tok == lay.close_id) {
      set_error(row, "[/SID] outside a span");
    } else if (row.format == OutputFormat::kIds && !is_sep_[tok]) {
      set_error(row, "text token " + std::to_string(tok) + " in output format 'ids' (only [SID] spans, separators and EOS)");
    }
    return -1;
  }
  // Inside a span.
  if (row.type >= 0 && row.depth == index_->type(row.type).levels) {
    if (tok != lay.close_id) return set_error(row, "token " + std::to_string(tok) + " after the last level; expected [/SID]"), -1;
    const TypeTrie& tt = index_->type(row.type);
    const int32_t item = tt.leaf_item[row.node - tt.first_leaf()];
    note_emitted(row, item);
    row.status = RowStatus::kText;
    row.type = -1;
    row.depth = 0;
    row.node = 0;
    return item;
  }
  int32_t t = row.type;
  if (t < 0) {
    t = index_->type_of_first_token(tok);
    if (t < 0) return set_error(row, "token " + std::to_string(tok) + " right after [SID] is not a first-level SID code"), -1;
    if (!type_open(row, t))
      return set_error(row, "token " + std::to_string(tok) + " opens item type " + std::to_string(t) + ", which is not allowed or has no items left"), -1;
  }
  const TypeTrie& tt = index_->type(t);
  const int32_t code = tok - tt.band_start[row.depth];
  if (code < 0 || code >= tt.band_size[row.depth])
    return set_error(row, "token " + std::to_string(tok) + " is not a level-" + std::to_string(row.depth + 1) + " code of item type " + std::to_string(t)), -1;
  const int64_t child = tt.find_child(row.depth == 0 ? 0 : row.node, code);
  if (child < 0) return set_error(row, "no catalog item has the SID prefix ending in token " + std::to_string(tok)), -1;
  if (!child_offered(row, t, child, row.depth + 1))
    return set_error(row, "every item under the SID prefix ending in token " + std::to_string(tok) + " is excluded or not allowed"), -1;
  row.type = t;
  row.node = child;
  row.depth += 1;
  return -1;
}

void BatchDecodeState::advance(const int64_t* tokens, const int64_t* rows, int64_t n, int32_t* completed) {
  if (!rows && n != num_rows())
    throw InvalidArgument("tokens has " + std::to_string(n) + " entries but the state has " + std::to_string(num_rows()) + " rows");
  if (rows)
    for (int64_t i = 0; i < n; ++i)
      if (rows[i] < 0 || rows[i] >= num_rows())
        throw InvalidArgument("indices[" + std::to_string(i) + "] = " + std::to_string(rows[i]) + " out of range [0, " + std::to_string(num_rows()) + ")");
  auto work = [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) completed[i] = advance_row(rows_[rows ? rows[i] : i], tokens[i]);
  };
  // Rows named twice in `rows` must not race: only go parallel without explicit rows.
  if (rows || num_threads_ == 1 || n < kParallelMinRows) work(0, n);
  else ThreadPool::global().parallel_for(n, work);
}

void BatchDecodeState::reorder(const int64_t* src, int64_t n) {
  if (n < 0) throw InvalidArgument("reorder: negative length");
  for (int64_t i = 0; i < n; ++i)
    if (src[i] < 0 || src[i] >= num_rows())
      throw InvalidArgument("reorder: src[" + std::to_string(i) + "] = " + std::to_string(src[i]) + " out of range [0, " + std::to_string(num_rows()) + ")");
  std::vector<Row> next(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    next[i] = rows_[src[i]];
    // The bitmask row i still holds what old row i wrote there, whatever row moved in.
    if (i < num_rows()) {
      next[i].last_mask_row = rows_[i].last_mask_row;
      next[i].last_mask_width = rows_[i].last_mask_width;
      next[i].dirty_lo = rows_[i].dirty_lo;
      next[i].dirty_hi = rows_[i].dirty_hi;
    } else {
      next[i].last_mask_row = nullptr;
    }
  }
  rows_.swap(next);
}

bool BatchDecodeState::is_allowed(int64_t r, int64_t token) const {
  if (r < 0 || r >= num_rows()) throw InvalidArgument("row " + std::to_string(r) + " out of range");
  if (token < 0 || token >= vocab_) return false;
  Row copy = rows_[r];
  std::vector<int32_t> mask(static_cast<size_t>(words_), 0);
  fill_row(copy, mask.data(), words_, false);  // the copy's bookkeeping is discarded
  return (uint32_t(mask[token >> 5]) >> (token & 31)) & 1u;
}

}  // namespace neo
