// The cache behind step_buffer (step_buffers.h): freed blocks kept in the order they were freed; an
// allocation takes the smallest block that fits without wasting more than a quarter of it. Blocks are freed
// for good, oldest first, once more than kMaxBlocks or kMaxBytes are held, and when kMaxAge allocations have
// passed without taking them (sizes a workload no longer asks for, e.g. after a change of sequence length).
#include "step_buffers.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/library.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <utility>

namespace fastrnn {
namespace {

// Below this glibc reuses freed memory without faults; the cache would only add a lock.
constexpr size_t kMinBytes = size_t{1} << 20;
// A few bidirectional layers' outputs and workspaces plus a backward's gradients.
constexpr size_t kMaxBlocks = 32;
constexpr size_t kMaxBytes = size_t{1} << 30;
// A training step of an 8-direction stack (4 bidirectional layers) takes ~40 blocks; a block of a size it
// uses is taken again well within this many allocations.
constexpr uint64_t kMaxAge = 256;

struct Block {
  void* ptr;
  size_t bytes;
  uint64_t freed_at = 0;  // the allocation count when it was given back
};

class BlockCache {
 public:
  // A cached block of at least `bytes` (and at most a third more), or a new one.
  Block take(size_t bytes) {
    std::deque<Block> evicted;
    std::optional<Block> found;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      ++clock_;
      evict_stale(evicted);
      auto best = free_.end();
      for (auto it = free_.begin(); it != free_.end(); ++it) {
        if (it->bytes >= bytes && it->bytes - bytes <= it->bytes / 4 &&
            (best == free_.end() || it->bytes < best->bytes)) {
          best = it;
        }
      }
      if (best != free_.end()) {
        found = *best;
        free_.erase(best);
        held_ -= found->bytes;
      }
    }
    free_all(evicted);
    return found.has_value() ? *found : Block{c10::alloc_cpu(bytes), bytes};
  }

  void give_back(Block block) {
    if (block.bytes > kMaxBytes) {  // would evict every other block and then itself
      c10::free_cpu(block.ptr);
      return;
    }
    std::deque<Block> evicted;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      block.freed_at = clock_;
      free_.push_back(block);
      held_ += block.bytes;
      while (free_.size() > kMaxBlocks || held_ > kMaxBytes) pop_oldest(evicted);
    }
    free_all(evicted);
  }

  size_t release() {
    std::deque<Block> all;
    size_t bytes = 0;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      all.swap(free_);
      bytes = std::exchange(held_, 0);
    }
    free_all(all);
    return bytes;
  }

  size_t held() {
    std::lock_guard<std::mutex> guard(mutex_);
    return held_;
  }

 private:
  // Both with mutex_ held; the caller frees what they collect once it has let go of the lock.
  void pop_oldest(std::deque<Block>& out) {
    out.push_back(free_.front());
    held_ -= free_.front().bytes;
    free_.pop_front();
  }
  void evict_stale(std::deque<Block>& out) {
    while (!free_.empty() && clock_ - free_.front().freed_at > kMaxAge) pop_oldest(out);
  }
  static void free_all(const std::deque<Block>& blocks) {
    for (const Block& b : blocks) c10::free_cpu(b.ptr);
  }

  std::mutex mutex_;
  std::deque<Block> free_;  // in the order they were given back: freed_at never decreases
  size_t held_ = 0;
  uint64_t clock_ = 0;  // allocations of kMinBytes and up so far
};

// Never destroyed: a tensor freed during interpreter shutdown may still give its block back.
BlockCache& cache() {
  static BlockCache* instance = new BlockCache();
  return *instance;
}

// Storage allocator over the cache; small requests go to the CPU allocator (each DataPtr carries its own
// deleter, so a resize may move a tensor between the two).
class StepAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    if (bytes < kMinBytes) return c10::GetCPUAllocator()->allocate(bytes);
    const Block block = cache().take(bytes);
    return {block.ptr, new Block(block), &StepAllocator::free_block, c10::Device(c10::kCPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  static void free_block(void* context) {
    Block* block = static_cast<Block*>(context);
    cache().give_back(*block);
    delete block;
  }
};

StepAllocator& step_allocator() {
  static StepAllocator* instance = new StepAllocator();
  return *instance;
}

}  // namespace

at::Tensor step_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_CHECK(options.device().is_cpu(), "fastrnn: step_buffer is for CPU tensors");
  return at::detail::empty_generic(sizes, &step_allocator(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), std::nullopt);
}

at::Tensor zero_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor zeros = step_buffer(sizes, options);
  std::memset(zeros.data_ptr(), 0, zeros.nbytes());
  return zeros;
}

at::Tensor step_contiguous(const at::Tensor& t) {
  if (t.is_contiguous()) return t;
  return step_buffer(t.sizes(), t.options()).copy_(t);
}

at::Tensor step_copy(const at::Tensor& t) {
  at::Tensor copy = step_buffer(t.sizes(), t.options());
  if (!t.is_contiguous() || t.is_neg() || t.is_conj()) return copy.copy_(t);
  std::memcpy(copy.data_ptr(), t.const_data_ptr(), t.nbytes());
  return copy;
}

int64_t release_step_buffers() { return static_cast<int64_t>(cache().release()); }

int64_t cached_step_buffer_bytes() { return static_cast<int64_t>(cache().held()); }

}  // namespace fastrnn

TORCH_LIBRARY_FRAGMENT(fastrnn, m) {
  m.def("_release_step_buffers() -> int", &fastrnn::release_step_buffers);
  m.def("_cached_step_buffer_bytes() -> int", &fastrnn::cached_step_buffer_bytes);
}
