// Standalone C++ tests of the core, meant to run under AddressSanitizer/UBSan:
//   cmake -S . -B build/asan -DNEO_SANITIZE=ON -DNEO_BUILD_CPP_TESTS=ON && cmake --build build/asan
//   ./build/asan/neo_core_tests
// They drive every entry point with random catalogs, random (often invalid) tokens, reorders,
// and corrupted index files whose checksum was recomputed (so the structural checks, not the
// checksum, must reject them). The Python suite holds the oracle comparisons; this binary exists
// so the sanitizers see the same code paths without a Python interpreter in the way.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <random>
#include <set>
#include <vector>

#include "neo/decode_state.h"
#include "neo/trie.h"

using namespace neo;

static int failures = 0;
#define CHECK(cond)                                                      \
  do {                                                                   \
    if (!(cond)) {                                                       \
      std::cerr << __FILE__ << ":" << __LINE__ << ": CHECK(" #cond ")\n"; \
      ++failures;                                                        \
    }                                                                    \
  } while (0)

struct Catalog {
  LayoutSpec layout;
  std::vector<std::vector<int32_t>> tokens, rows;
};

static Catalog random_catalog(std::mt19937_64& rng) {
  Catalog c;
  const int text = 40;
  int next = text;
  c.layout.open_id = next++;
  c.layout.close_id = next++;
  const int ntypes = 1 + int(rng() % 3);
  int row = 0;
  for (int t = 0; t < ntypes; ++t) {
    TypeBandsSpec b;
    const int L = 2 + int(rng() % 5);
    for (int l = 0; l < L; ++l) {
      const int sizes[] = {2, 3, 8, 31, 32, 33, 256, 1024};
      const int k = sizes[rng() % 8];
      b.band_start.push_back(next);
      b.band_size.push_back(k);
      next += k;
    }
    const int n = int(rng() % 200);
    std::set<std::vector<int32_t>> seen;
    std::vector<int32_t> toks, rows;
    const bool heavy = rng() % 2;
    for (int i = 0; i < n; ++i) {
      std::vector<int32_t> sid;
      for (int l = 0; l < L; ++l) sid.push_back(b.band_start[l] + int(rng() % (heavy ? std::min(3, b.band_size[l]) : b.band_size[l])));
      if (!seen.insert(sid).second) continue;
      toks.insert(toks.end(), sid.begin(), sid.end());
      rows.push_back(row);
      row += 1 + int(rng() % 3);
    }
    c.layout.types.push_back(b);
    c.tokens.push_back(toks);
    c.rows.push_back(rows);
  }
  c.layout.vocab_size = next + int(rng() % 40);
  return c;
}

static std::shared_ptr<SidIndex> build(const Catalog& c) {
  std::vector<TypeInput> in;
  for (size_t t = 0; t < c.tokens.size(); ++t) {
    TypeInput ti;
    ti.levels = int32_t(c.layout.types[t].band_start.size());
    ti.num_items = int64_t(c.rows[t].size());
    ti.tokens = c.tokens[t].data();
    ti.item_rows = c.rows[t].data();
    in.push_back(ti);
  }
  return SidIndex::build(c.layout, in);
}

static void exercise_state(const std::shared_ptr<const SidIndex>& idx, std::mt19937_64& rng) {
  const int V = idx->layout().vocab_size;
  int64_t R = 1 + int64_t(rng() % 80);  // crosses the parallel threshold sometimes
  BatchDecodeState st(idx, R, {1}, {5}, int(rng() % 3));
  for (int64_t r = 0; r < R; ++r) {
    RowOptions o;
    o.format = OutputFormat(rng() % 3);
    if (rng() % 3 == 0) o.allowed_types = rng() & 7;
    if (idx->num_items() && rng() % 2) {
      for (int k = 0; k < 5; ++k) {
        int32_t t = int32_t(rng() % idx->num_types());
        if (idx->type(t).num_leaves()) o.exclude.push_back(idx->type(t).leaf_item[rng() % idx->type(t).num_leaves()]);
      }
    }
    if (idx->num_items() && rng() % 4 == 0) {
      o.has_allow = true;
      for (int k = 0; k < 7; ++k) {
        int32_t t = int32_t(rng() % idx->num_types());
        if (idx->type(t).num_leaves()) o.allow.push_back(idx->type(t).leaf_item[rng() % idx->type(t).num_leaves()]);
      }
    }
    st.set_row_options(r, o);
  }
  const int64_t W = (V + 31) / 32 + 1;
  std::vector<int32_t> mask(size_t((R + 4) * W));
  std::vector<int32_t> done(size_t(R + 4));
  for (int step = 0; step < 80; ++step) {
    if (mask.size() < size_t((R + 4) * W)) {  // reorder grew the batch
      mask.assign(size_t((R + 4) * W), 0);
      done.assign(size_t(R + 4), 0);
    }
    st.fill_bitmask(mask.data(), R + 4, W, nullptr, 0, rng() % 2);
    std::vector<int64_t> toks(size_t(st.num_rows()));
    for (int64_t r = 0; r < st.num_rows(); ++r) {
      // pick an allowed token most of the time (walks go deep), anything now and then
      std::vector<int32_t> allowed;
      for (int tok = 0; tok < V; ++tok)
        if ((uint32_t(mask[r * W + tok / 32]) >> (tok % 32)) & 1) allowed.push_back(tok);
      for (int tok = V; tok < 32 * int(W); ++tok) CHECK(!((uint32_t(mask[r * W + tok / 32]) >> (tok % 32)) & 1));
      if (!allowed.empty() && rng() % 20) {
        toks[r] = allowed[rng() % allowed.size()];
        if (st.is_allowed(r, int32_t(toks[r])) != true) CHECK(false);
      } else {
        toks[r] = int64_t(rng() % (V + 10)) - 5;
      }
    }
    st.advance(toks.data(), nullptr, st.num_rows(), done.data());
    if (rng() % 6 == 0) {
      const int64_t n = 1 + int64_t(rng() % (R + 3));
      std::vector<int64_t> src(static_cast<size_t>(n));
      for (auto& s : src) s = int64_t(rng() % st.num_rows());
      st.reorder(src.data(), n);
      R = n;
    }
    if (rng() % 5 == 0) st.reset(nullptr, 0);
  }
  // bad arguments throw, never crash
  bool threw = false;
  try {
    int64_t bad = R + 10;
    st.fill_bitmask(mask.data(), R + 4, W, &bad, 1, false);
  } catch (const InvalidArgument&) {
    threw = true;
  }
  CHECK(threw);
}

static std::vector<char> read_file(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<char>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

static void fuzz_load(const std::shared_ptr<SidIndex>& idx, std::mt19937_64& rng) {
  const std::string path = "/tmp/neo_core_tests_" + std::to_string(rng() % 1000000) + ".idx";
  idx->save(path);
  auto good = read_file(path);
  {
    uint64_t sum;
    std::memcpy(&sum, good.data() + 24, 8);
    CHECK(sum == checksum64(reinterpret_cast<const uint8_t*>(good.data()) + 32, good.size() - 32));
  }
  for (int trial = 0; trial < 60; ++trial) {
    auto blob = good;
    const int flips = 1 + int(rng() % 4);
    for (int k = 0; k < flips; ++k) blob[32 + rng() % (blob.size() - 32)] ^= char(1 << (rng() % 8));
    uint64_t sum = checksum64(reinterpret_cast<const uint8_t*>(blob.data()) + 32, blob.size() - 32);
    std::memcpy(blob.data() + 24, &sum, 8);
    {
      std::ofstream f(path, std::ios::binary | std::ios::trunc);
      f.write(blob.data(), std::streamsize(blob.size()));
    }
    try {
      auto loaded = SidIndex::load(path, trial % 2);
      exercise_state(loaded, rng);  // whatever loaded must be safe to use
    } catch (const FormatError&) {
    }
  }
  std::remove(path.c_str());
}

int main() {
  std::mt19937_64 rng(12345);
  int built = 0;
  for (int iter = 0; iter < 60; ++iter) {
    Catalog c = random_catalog(rng);
    std::shared_ptr<SidIndex> idx;
    try {
      idx = build(c);
    } catch (const InvalidArgument& e) {
      CHECK(std::string(e.what()).find("empty catalog") != std::string::npos);
      continue;
    }
    ++built;
    // every SID looks up to its row and back
    for (size_t t = 0; t < c.tokens.size(); ++t) {
      const int L = int(c.layout.types[t].band_start.size());
      for (size_t i = 0; i < c.rows[t].size(); ++i) {
        CHECK(idx->lookup(int32_t(t), &c.tokens[t][i * L], L) == c.rows[t][i]);
        std::vector<int32_t> back(static_cast<size_t>(L));
        idx->leaf_tokens(idx->leaf_of_item(c.rows[t][i]), back.data());
        CHECK(std::equal(back.begin(), back.end(), &c.tokens[t][i * L]));
      }
    }
    exercise_state(idx, rng);
    if (iter % 4 == 0) fuzz_load(idx, rng);
  }
  // bad build input
  Catalog c = random_catalog(rng);
  while (c.rows[0].size() < 2) c = random_catalog(rng);
  c.tokens[0][0] = -7;
  bool threw = false;
  try {
    build(c);
  } catch (const InvalidArgument&) {
    threw = true;
  }
  CHECK(threw);
  std::cout << "neo_core_tests: " << built << " catalogs, " << failures << " failures\n";
  return failures ? 1 : 0;
}
