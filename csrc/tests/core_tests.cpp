// Standalone C++ tests of the core, meant to run under AddressSanitizer/UBSan:
//   cmake -S . -B build/asan -DNEO_SANITIZE=ON -DNEO_BUILD_CPP_TESTS=ON && cmake --build build/asan
//   ./build/asan/neo_core_tests
// They drive every entry point with random catalogs, random (often invalid) tokens, reorders,
// and corrupted index files whose checksum was recomputed (so the structural checks, not the
// checksum, must reject them). The Python suite holds the oracle comparisons; this binary exists
// so the sanitizers see the same code paths without a Python interpreter in the way.
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
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
    st.fill_bitmask(mask.data(), R + 4, W, W, nullptr, 0, rng() % 2);
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
    st.fill_bitmask(mask.data(), R + 4, W, W, &bad, 1, false);
  } catch (const InvalidArgument&) {
    threw = true;
  }
  CHECK(threw);
}

template <class F>
static bool throws_invalid(F&& f) {
  try {
    f();
  } catch (const InvalidArgument&) {
    return true;
  }
  return false;
}

// Fills through a strided, offset view of a buffer with guard words all around (a numpy/torch
// column slice: width words per row at a larger row pitch, not starting at the buffer's start)
// and checks, step after step (incremental fills included), that every row equals a contiguous
// fill of a twin state and that no word outside the view changed.
static void exercise_geometry(const std::shared_ptr<const SidIndex>& idx, std::mt19937_64& rng) {
  const int V = idx->layout().vocab_size;
  const int64_t words = (V + 31) / 32;
  const int64_t R = 1 + int64_t(rng() % 40);
  const int threads = int(rng() % 3);
  BatchDecodeState st(idx, R, {1}, {5}, threads), ref(idx, R, {1}, {5}, 1);
  const int64_t width = words + int64_t(rng() % 3);
  const int64_t pitch = width + int64_t(rng() % 9);  // == width: contiguous rows
  const int64_t offset = int64_t(rng() % 5);       // column offset of the view
  const bool reversed = rng() % 4 == 0;            // negative pitch (a reversed-rows view)
  const int64_t guard = 16;
  const int32_t kGuard = 0x5a5a5a5a;
  std::vector<int32_t> buf(size_t(2 * guard + R * pitch + offset), kGuard);
  int32_t* base = buf.data() + guard + offset + (reversed ? (R - 1) * pitch : 0);
  const int64_t signed_pitch = reversed ? -pitch : pitch;
  std::vector<int32_t> want(size_t(R * words));
  std::vector<int32_t> done(static_cast<size_t>(R));
  auto in_view = [&](int64_t k) {  // is buf[k] one of the words the fill may write?
    for (int64_t r = 0; r < R; ++r) {
      const int64_t b = (base - buf.data()) + r * signed_pitch;
      if (k >= b && k < b + width) return true;
    }
    return false;
  };
  std::vector<uint8_t> owned(buf.size());
  for (size_t k = 0; k < buf.size(); ++k) owned[k] = in_view(int64_t(k));
  for (int step = 0; step < 30; ++step) {
    st.fill_bitmask(base, R, width, signed_pitch, nullptr, 0, step > 0 && rng() % 3 != 0);
    ref.fill_bitmask(want.data(), R, words, words, nullptr, 0, false);
    for (size_t k = 0; k < buf.size(); ++k)
      if (!owned[k]) CHECK(buf[k] == kGuard);
    for (int64_t r = 0; r < R; ++r) {
      const int32_t* row = base + r * signed_pitch;
      CHECK(std::equal(row, row + words, &want[size_t(r * words)]));
      for (int64_t w = words; w < width; ++w) CHECK(row[w] == 0);
    }
    // advance both by the same tokens: mostly allowed ones, sometimes anything
    std::vector<int64_t> toks(static_cast<size_t>(R));
    for (int64_t r = 0; r < R; ++r) {
      std::vector<int32_t> allowed;
      for (int tok = 0; tok < V; ++tok)
        if ((uint32_t(want[size_t(r * words) + tok / 32]) >> (tok % 32)) & 1) allowed.push_back(tok);
      toks[r] = !allowed.empty() && rng() % 10 ? allowed[rng() % allowed.size()] : int64_t(rng() % V);
    }
    st.advance(toks.data(), nullptr, R, done.data());
    ref.advance(toks.data(), nullptr, R, done.data());
  }
  // a subset of rows through `indices`: only those rows change
  std::vector<int64_t> some;
  for (int64_t r = 0; r < R; r += 2) some.push_back(r);
  auto before = buf;
  st.reset(nullptr, 0);
  st.fill_bitmask(base, R, width, signed_pitch, some.data(), int64_t(some.size()), false);
  for (size_t k = 0; k < buf.size(); ++k) {
    if (!owned[k]) CHECK(buf[k] == kGuard);
    const int64_t rel = int64_t(k) - (base - buf.data());
    const int64_t r = reversed ? -((rel - (rel >= 0 ? 0 : pitch - 1)) / pitch) : (rel >= 0 ? rel / pitch : -1);
    if (owned[k] && r >= 0 && r < R && r % 2 == 1) CHECK(buf[k] == before[k]);
  }
  // bad geometries throw before writing anything
  before = buf;
  if (R > 1) CHECK(throws_invalid([&] { st.fill_bitmask(base, R, width, width - 1, nullptr, 0, false); }));
  CHECK(throws_invalid([&] { st.fill_bitmask(base, R, words - 1, pitch, nullptr, 0, false); }));
  CHECK(throws_invalid([&] { st.fill_bitmask(base, R - 1, width, signed_pitch, nullptr, 0, false); }));
  CHECK(buf == before);
}

// Cases the random walks may miss: empty batches, zero-word masks, duplicate indices on the
// thread-pool path, special files given to load().
static void edge_cases(const std::shared_ptr<const SidIndex>& idx) {
  const int64_t words = (idx->layout().vocab_size + 31) / 32;
  {  // an empty batch fills as a no-op, with or without a buffer
    BatchDecodeState st(idx, 0, {1}, {}, 0);
    st.fill_bitmask(nullptr, 0, words, words, nullptr, 0, false);
    int32_t guard[4] = {7, 7, 7, 7};
    st.fill_bitmask(guard, 0, words, 0, nullptr, 0, true);
    CHECK(guard[0] == 7 && guard[3] == 7);
    std::vector<int64_t> none;
    st.reorder(none.data(), 0);
    st.fill_bitmask(nullptr, 0, words, words, none.data(), 0, false);
    // a zero-word mask says how many words it needs
    try {
      st.fill_bitmask(nullptr, 0, 0, 0, nullptr, 0, false);
      CHECK(false);
    } catch (const InvalidArgument& e) {
      CHECK(std::string(e.what()).find("needs " + std::to_string(words)) != std::string::npos);
    }
  }
  {  // duplicate indices: rejected on the serial and the thread-pool path, nothing written
    for (int64_t R : {int64_t(8), int64_t(600), int64_t(2000)}) {
      BatchDecodeState st(idx, R, {1}, {}, 0);
      std::vector<int32_t> mask(size_t(R * words), 0x11);
      std::vector<int64_t> rows(static_cast<size_t>(R));
      for (int64_t i = 0; i < R; ++i) rows[i] = i;
      rows[size_t(R - 1)] = R / 2;
      try {
        st.fill_bitmask(mask.data(), R, words, words, rows.data(), R, false);
        CHECK(false);
      } catch (const InvalidArgument& e) {
        CHECK(std::string(e.what()).find("repeats") != std::string::npos);
      }
      CHECK(std::all_of(mask.begin(), mask.end(), [](int32_t w) { return w == 0x11; }));
      rows[size_t(R - 1)] = R - 1;  // distinct: fine
      st.fill_bitmask(mask.data(), R, words, words, rows.data(), R, false);
    }
  }
  {  // special files fail fast (a FIFO used to block forever in open()); alarm() turns a hang into a failure
    const std::string dir = "/tmp/neo_core_tests_special_" + std::to_string(::getpid());
    ::mkdir(dir.c_str(), 0700);
    const std::string fifo = dir + "/fifo", sock = dir + "/sock";
    CHECK(::mkfifo(fifo.c_str(), 0600) == 0);
    int sfd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", sock.c_str());
    const bool have_sock = sfd >= 0 && ::bind(sfd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    ::alarm(20);
    for (bool mm : {false, true}) {
      for (const std::string& p : {fifo, dir, std::string("/dev/null"), std::string("/dev/zero"), sock}) {
        if (p == sock && !have_sock) continue;
        try {
          SidIndex::load(p, mm);
          CHECK(false);
        } catch (const FormatError& e) {
          CHECK(std::string(e.what()).find("not a regular file") != std::string::npos);
        }
      }
    }
    ::alarm(0);
    if (sfd >= 0) ::close(sfd);
    std::remove(fifo.c_str());
    std::remove(sock.c_str());
    ::rmdir(dir.c_str());
  }
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
    exercise_geometry(idx, rng);
    if (iter == 0) edge_cases(idx);
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
