#include "weft/ops/tensor_parallel/common/side_stream.h"

#include "weft/runtime/cuda_check.h"
#include "weft/runtime/error.h"

namespace weft::tp {

SideStream::SideStream(int events) {
  int least = 0, greatest = 0;
  WEFT_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
  WEFT_CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, greatest));
  try {
    for (int i = 0; i < events; ++i) {
      cudaEvent_t e = nullptr;
      WEFT_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      events_.push_back(e);
    }
  } catch (...) {
    for (auto e : events_) cudaEventDestroy(e);
    cudaStreamDestroy(stream_);
    throw;
  }
}

SideStream::~SideStream() {
  if (stream_) cudaStreamSynchronize(stream_);
  for (auto e : events_) cudaEventDestroy(e);
  if (stream_) cudaStreamDestroy(stream_);
}

void SideStream::link(int i, cudaStream_t from, cudaStream_t to) {
  record(i, from);
  wait(i, to);
}

void SideStream::record(int i, cudaStream_t on) {
  WEFT_CHECK(i >= 0 && i < events(), "side-stream event {} out of range [0, {})", i, events());
  WEFT_CUDA_CHECK(cudaEventRecord(events_[static_cast<size_t>(i)], on));
}

void SideStream::wait(int i, cudaStream_t on) {
  WEFT_CHECK(i >= 0 && i < events(), "side-stream event {} out of range [0, {})", i, events());
  WEFT_CUDA_CHECK(cudaStreamWaitEvent(on, events_[static_cast<size_t>(i)], 0));
}

}  // namespace weft::tp
