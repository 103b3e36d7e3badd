// The ops' large tensors (outputs, the workspace a layer saves for its backward, the gradients a backward
// returns) allocated from a small cache of freed blocks instead of malloc.
//
// A training step frees tens of MB of them at its end. glibc then either returns its heap top to the kernel
// (the top exceeded its trim threshold) or, above 32 MB, unmaps the block, and the next step faults every page
// in again, zeroed: measured on this project's VM, LSTM T=100 B=64 H=1024 training took 36-42K page faults a
// step (1.80-1.99 s) and with the workspace and gradients cached 6-15K (1.70-1.73 s); at T=100 B=32 H=128
// 2000-3000 faults (~3 ms of a 17 ms step) in some processes and none in others.
//
// The tensors are ordinary resizable CPU tensors (their storage's allocator is the cache). The cache holds at
// most 32 blocks and 1 GiB, and frees a block that 256 later allocations did not take.
#pragma once

#include <ATen/ATen.h>

namespace fastrnn {

// at::empty(sizes, options) for a CPU tensor; from the cache when it is large enough to matter.
at::Tensor step_buffer(at::IntArrayRef sizes, const at::TensorOptions& options);

// step_buffer filled with zeros (one memset; at::zeros is two dispatched ops).
at::Tensor zero_buffer(at::IntArrayRef sizes, const at::TensorOptions& options);

// t itself when contiguous, else a contiguous copy in a step_buffer (a backward's incoming gradient is often
// an expanded tensor, e.g. from y.sum()).
at::Tensor step_contiguous(const at::Tensor& t);

// A contiguous copy of t in a step_buffer: a memcpy where t is dense (a clone's copy kernel costs ~1 us more on a
// tiny state).
at::Tensor step_copy(const at::Tensor& t);

// Frees every cached block; returns the bytes released.
int64_t release_step_buffers();

// Bytes now held in freed blocks.
int64_t cached_step_buffer_bytes();

}  // namespace fastrnn
