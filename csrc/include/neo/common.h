// Shared small types of the neo core: array views, errors. No Python, no torch.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace neo {

// Bad argument from the caller (maps to Python ValueError).
struct InvalidArgument : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// A saved index that cannot be read: truncated, corrupted, wrong version (maps to IndexFormatError).
struct FormatError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Read-only view of a contiguous array owned elsewhere (a vector, or a memory-mapped file).
template <class T>
struct ArrayView {
  const T* ptr = nullptr;
  size_t n = 0;
  const T& operator[](size_t i) const { return ptr[i]; }
  size_t size() const { return n; }
  const T* begin() const { return ptr; }
  const T* end() const { return ptr + n; }
};

}  // namespace neo
